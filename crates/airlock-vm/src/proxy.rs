//! The supervisor's relay between the agent and `airlock exec`, `cp` and the supervisor
//! itself. QEMU's socket takes one connection, which the supervisor keeps; other processes
//! connect to the supervisor's control socket and speak the same protocol there.
//!
//! Each client numbers its channels from 1, so the relay gives every (client, channel) pair
//! a channel of its own on the agent's connection and maps replies back. When a client goes
//! away, the commands it started get SIGKILL, so none runs on without anyone reading it.

use std::collections::HashMap;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use airlock_protocol::{Frame, FrameKind, FrameReader, FrameWriter, Message};

use crate::client::{self, Event, SharedWriter};

type ClientId = u64;

/// Where each channel of the agent's connection leads.
#[derive(Default)]
struct Routes {
    next_agent_channel: u32,
    to_client: HashMap<u32, (ClientId, u32)>,
    to_agent: HashMap<(ClientId, u32), u32>,
    clients: HashMap<ClientId, Arc<Mutex<FrameWriter<UnixStream>>>>,
}

impl Routes {
    fn agent_channel(&mut self, client: ClientId, channel: u32) -> u32 {
        if let Some(agent_channel) = self.to_agent.get(&(client, channel)) {
            return *agent_channel;
        }
        // The supervisor's own connection used channels from 1 before the relay started.
        self.next_agent_channel = self.next_agent_channel.max(1 << 20) + 1;
        let agent_channel = self.next_agent_channel;
        self.to_agent.insert((client, channel), agent_channel);
        self.to_client.insert(agent_channel, (client, channel));
        agent_channel
    }

    fn forget(&mut self, agent_channel: u32) {
        if let Some(route) = self.to_client.remove(&agent_channel) {
            self.to_agent.remove(&route);
        }
    }
}

/// A running relay.
pub struct Relay {
    /// Set once the agent's connection ended: the guest stopped.
    pub guest_gone: Arc<AtomicBool>,
}

/// Starts the relay's threads: one reads the agent, one accepts clients, one per client
/// reads it.
pub fn start(listener: UnixListener, agent: SharedWriter, events: Receiver<Event>) -> Relay {
    let routes = Arc::new(Mutex::new(Routes::default()));
    let guest_gone = Arc::new(AtomicBool::new(false));
    {
        let routes = Arc::clone(&routes);
        let guest_gone = Arc::clone(&guest_gone);
        std::thread::spawn(move || relay_agent(events, &routes, &guest_gone));
    }
    std::thread::spawn(move || {
        let mut next_client: ClientId = 1;
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let id = next_client;
            next_client += 1;
            let (routes, agent) = (Arc::clone(&routes), Arc::clone(&agent));
            std::thread::spawn(move || relay_client(id, stream, &routes, &agent));
        }
    });
    Relay { guest_gone }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Hands each frame from the agent to the client whose channel it belongs to.
fn relay_agent(events: Receiver<Event>, routes: &Mutex<Routes>, guest_gone: &AtomicBool) {
    for event in events {
        let Event::Frame(mut frame) = event else {
            break;
        };
        let mut routes = lock(routes);
        if frame.channel == airlock_protocol::CONTROL_CHANNEL {
            // Heartbeats go to every client, each of which watches the guest's silence.
            for writer in routes.clients.values() {
                let _ = lock(writer).write_frame(&frame);
            }
            continue;
        }
        let Some(&(client, channel)) = routes.to_client.get(&frame.channel) else {
            continue;
        };
        let agent_channel = frame.channel;
        if frame.kind == FrameKind::Message && ends_exchange(&frame) {
            routes.forget(agent_channel);
        }
        frame.channel = channel;
        if let Some(writer) = routes.clients.get(&client) {
            let _ = lock(writer).write_frame(&frame);
        }
    }
    guest_gone.store(true, Ordering::SeqCst);
    // Every client's reader sees end of file once its socket is shut down.
    for writer in lock(routes).clients.values() {
        let _ = lock(writer).get_ref().shutdown(std::net::Shutdown::Both);
    }
}

/// Returns whether a message is the last of its channel's exchange.
fn ends_exchange(frame: &Frame) -> bool {
    matches!(
        frame.to_message(),
        Ok(Message::Exited { .. }
            | Message::ExecFailed { .. }
            | Message::Done
            | Message::Skipped { .. }
            | Message::Error { .. }
            | Message::Entries { .. })
    )
}

/// Forwards a client's frames to the agent, and kills its commands when it goes away.
fn relay_client(id: ClientId, stream: UnixStream, routes: &Mutex<Routes>, agent: &SharedWriter) {
    let Ok(writer) = stream.try_clone() else {
        return;
    };
    lock(routes)
        .clients
        .insert(id, Arc::new(Mutex::new(FrameWriter::new(writer))));
    let mut reader = FrameReader::new(stream);
    while let Ok(Some(mut frame)) = reader.read_frame() {
        // Shutdown and channel 0 belong to the supervisor alone.
        if frame.channel == airlock_protocol::CONTROL_CHANNEL {
            continue;
        }
        frame.channel = lock(routes).agent_channel(id, frame.channel);
        if client::lock(agent).write_frame(&frame).is_err() {
            break;
        }
    }
    let mut routes = lock(routes);
    routes.clients.remove(&id);
    let open: Vec<u32> = routes
        .to_agent
        .iter()
        .filter(|((client, _), _)| *client == id)
        .map(|(_, agent_channel)| *agent_channel)
        .collect();
    for agent_channel in open {
        routes.forget(agent_channel);
        let kill = Message::Signal {
            signal: libc::SIGKILL,
        };
        let _ = client::lock(agent).send(agent_channel, &kill);
    }
}
