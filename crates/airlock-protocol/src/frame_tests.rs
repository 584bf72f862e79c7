use std::io::{self, Read};

use super::*;
use crate::message::{DirEntry, EntryKind, PROTOCOL_VERSION};

fn encoded(frames: &[Frame]) -> Vec<u8> {
    let mut out = Vec::new();
    for frame in frames {
        frame.encode_into(&mut out).unwrap();
    }
    out
}

fn exec_request() -> Message {
    Message::Exec {
        argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        cwd: "/workspace".into(),
        tty: None,
        uid: 0,
        gid: 0,
        host_time: Some(1_796_430_909_012_157_000),
    }
}

#[test]
fn frames_round_trip_through_decoder() {
    let frames = vec![
        Frame::message(1, &exec_request()),
        Frame::data(FrameKind::Stdout, 1, b"hi\n".to_vec()),
        Frame::data(FrameKind::Stderr, 7, Vec::new()),
    ];
    let mut decoder = Decoder::new();
    decoder.push(&encoded(&frames));
    for expected in &frames {
        assert_eq!(decoder.next_frame().unwrap().as_ref(), Some(expected));
    }
    assert_eq!(decoder.next_frame().unwrap(), None);
    assert_eq!(decoder.buffered(), 0);
}

#[test]
fn decoder_waits_for_partial_frames() {
    let frame = Frame::data(FrameKind::Stdout, 3, b"partial reads".to_vec());
    let bytes = encoded(std::slice::from_ref(&frame));
    let mut decoder = Decoder::new();
    // One byte at a time: nothing until the last byte of the frame arrives.
    for (index, byte) in bytes.iter().enumerate() {
        decoder.push(&[*byte]);
        let decoded = decoder.next_frame().unwrap();
        if index + 1 < bytes.len() {
            assert_eq!(decoded, None, "a frame after {} bytes", index + 1);
        } else {
            assert_eq!(decoded, Some(frame.clone()));
        }
    }
}

#[test]
fn decoder_rejects_oversized_length() {
    let mut header = ((MAX_PAYLOAD + 1) as u32).to_le_bytes().to_vec();
    header.extend([3, 1, 0, 0, 0]);
    let mut decoder = Decoder::new();
    decoder.push(&header);
    let error = decoder.next_frame().unwrap_err();
    assert!(matches!(error, FrameError::TooLarge { length } if length == MAX_PAYLOAD + 1));
}

#[test]
fn encoder_rejects_oversized_payload() {
    let frame = Frame::data(FrameKind::FileData, 1, vec![0; MAX_PAYLOAD + 1]);
    assert!(matches!(
        frame.encode_into(&mut Vec::new()),
        Err(FrameError::TooLarge { .. })
    ));
}

/// A reader that returns at most `step` bytes per read, as a serial port does.
struct Trickle {
    bytes: Vec<u8>,
    at: usize,
    step: usize,
}

impl Read for Trickle {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let count = self.step.min(buffer.len()).min(self.bytes.len() - self.at);
        buffer[..count].copy_from_slice(&self.bytes[self.at..self.at + count]);
        self.at += count;
        Ok(count)
    }
}

#[test]
fn large_payload_split_and_reassembled() {
    let data: Vec<u8> = (0..3 * MAX_PAYLOAD + 12345)
        .map(|i| (i % 251) as u8)
        .collect();
    let mut writer = FrameWriter::new(Vec::new());
    writer.send_data(FrameKind::FileData, 5, &data).unwrap();
    writer.end_stream(FrameKind::FileData, 5).unwrap();
    let bytes = writer.get_ref().clone();
    let mut reader = FrameReader::new(Trickle {
        bytes,
        at: 0,
        step: 4093,
    });
    let mut received = Vec::new();
    let mut frames = 0;
    loop {
        let frame = reader
            .read_frame()
            .unwrap()
            .expect("a frame before the end");
        assert_eq!(frame.channel, 5);
        if frame.is_end_of_stream() {
            break;
        }
        frames += 1;
        received.extend(frame.payload);
    }
    assert_eq!(frames, 4);
    assert_eq!(received.len(), data.len());
    assert!(received == data, "the reassembled bytes differ");
    assert!(reader.read_frame().unwrap().is_none());
}

#[test]
fn reader_reports_stream_cut_inside_frame() {
    let mut bytes = encoded(&[Frame::data(FrameKind::Stdout, 1, b"abcdef".to_vec())]);
    bytes.truncate(bytes.len() - 2);
    let mut reader = FrameReader::new(bytes.as_slice());
    let error = reader.read_frame().unwrap_err();
    assert!(matches!(error, FrameError::Truncated { buffered: 13 }));
}

#[test]
fn unknown_frame_kind_decoded_and_skippable() {
    let frames = [
        Frame::data(FrameKind::Unknown(200), 2, b"from a newer peer".to_vec()),
        Frame::message(2, &Message::Done),
    ];
    let bytes = encoded(&frames);
    let mut reader = FrameReader::new(bytes.as_slice());
    let first = reader.read_frame().unwrap().unwrap();
    assert_eq!(first.kind, FrameKind::Unknown(200));
    let second = reader.read_frame().unwrap().unwrap();
    assert_eq!(second.to_message().unwrap(), Message::Done);
}

#[test]
fn unknown_message_type_parses_as_unknown() {
    let frame = Frame::data(
        FrameKind::Message,
        0,
        br#"{"type":"snapshot","label":"x"}"#.to_vec(),
    );
    assert_eq!(frame.to_message().unwrap(), Message::Unknown);
}

#[test]
fn malformed_message_names_channel() {
    let frame = Frame::data(FrameKind::Message, 9, b"{not json".to_vec());
    let error = frame.to_message().unwrap_err();
    assert!(matches!(
        error,
        FrameError::InvalidMessage { channel: 9, .. }
    ));
}

#[test]
fn messages_round_trip_as_json() {
    let messages = [
        exec_request(),
        Message::Ready {
            version: PROTOCOL_VERSION,
        },
        Message::Exited {
            code: None,
            signal: Some(9),
            out_of_memory: true,
            pids_limit: false,
        },
        Message::Entries {
            entries: vec![DirEntry {
                name: "a".into(),
                kind: EntryKind::Symlink,
                size: 1,
                mode: 0o777,
                target: Some("b".into()),
                whiteout: false,
                opaque: false,
            }],
        },
        Message::Shutdown,
    ];
    for message in messages {
        let frame = Frame::message(4, &message);
        assert_eq!(frame.to_message().unwrap(), message);
    }
}

#[test]
fn interleaved_channels_keep_their_order() {
    let mut writer = FrameWriter::new(Vec::new());
    for index in 0..10u8 {
        let channel = u32::from(index % 3) + 1;
        writer
            .send_data(FrameKind::Stdout, channel, &[index])
            .unwrap();
    }
    let bytes = writer.get_ref().clone();
    let mut reader = FrameReader::new(bytes.as_slice());
    let mut per_channel: [Vec<u8>; 4] = Default::default();
    while let Some(frame) = reader.read_frame().unwrap() {
        per_channel[frame.channel as usize].extend(frame.payload);
    }
    assert_eq!(per_channel[1], [0, 3, 6, 9]);
    assert_eq!(per_channel[2], [1, 4, 7]);
    assert_eq!(per_channel[3], [2, 5, 8]);
}
