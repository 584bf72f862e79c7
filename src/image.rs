//! `airlock image`: carries out the image actions on the container engine and prints their
//! results. Ids go to stdout, so that `id=$(airlock image import ...)` works; progress and
//! messages go to stderr.

use std::time::{Duration, UNIX_EPOCH};

use airlock_core::audit::format_rfc3339;
use airlock_core::exit::AIRLOCK_FAILED;
use airlock_core::size::format_bytes_short;
use airlock_core::{BackendError, ImageAction};
use airlock_docker::image::{self, ImageSummary, Imported, ImportedFrom, Progress};
use airlock_docker::Engine;
use airlock_namespace::error_chain;

/// Connects to the engine, carries out `action` and prints its result; returns the exit
/// status.
pub fn perform(action: ImageAction, json: bool) -> Result<u8, BackendError> {
    let engine = Engine::connect()?;
    let progress = Progress::for_stderr();
    match action {
        ImageAction::Import { source, name } => {
            let imported = image::import(&engine, &source, &name, progress)?;
            eprintln!("airlock: {}", describe_import(&source, &imported));
            println!("{}", imported.id);
            Ok(0)
        }
        ImageAction::Pull { reference } => {
            let pulled = image::pull(&engine, &reference, progress)?;
            eprintln!("airlock: pulled {}", pulled.reference);
            println!("{}", pulled.id);
            Ok(0)
        }
        ImageAction::List => {
            let images = image::list(&engine)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&images)?);
            } else {
                print_images(&images);
            }
            Ok(0)
        }
        ImageAction::Remove { names, force } => {
            let mut failed = false;
            for name in &names {
                match image::remove(&engine, name, force) {
                    Ok(removed) if removed.deleted.is_empty() => {
                        eprintln!("airlock: untagged {name}; other names still point to its image");
                    }
                    Ok(_) => eprintln!("airlock: removed {name}"),
                    Err(error) => {
                        eprintln!("airlock: {}", error_chain(&error));
                        failed = true;
                    }
                }
            }
            Ok(if failed { AIRLOCK_FAILED } else { 0 })
        }
    }
}

fn describe_import(source: &std::path::Path, imported: &Imported) -> String {
    let details = match imported.source {
        ImportedFrom::Directory(summary) => {
            let mut text = format!("{} entries", summary.entries);
            if summary.skipped_sockets > 0 {
                text.push_str(&format!(", {} sockets skipped", summary.skipped_sockets));
            }
            if summary.skipped_mounts > 0 {
                text.push_str(&format!(
                    ", the contents of {} mount points skipped",
                    summary.skipped_mounts
                ));
            }
            text
        }
        ImportedFrom::Tarball(compression) => format!("{} tarball", compression.name()),
    };
    format!(
        "imported {} as {} ({details}, {} of tar)",
        source.display(),
        imported.name,
        format_bytes_short(imported.bytes)
    )
}

/// Prints one row per name of each image, and one `<none>` row for an untagged image.
fn print_images(images: &[ImageSummary]) {
    let mut rows = vec![[
        "IMAGE ID".to_owned(),
        "NAME".to_owned(),
        "CREATED".to_owned(),
        "SIZE".to_owned(),
    ]];
    for image in images {
        let id = image.id.strip_prefix("sha256:").unwrap_or(&image.id);
        let id = id.get(..12).unwrap_or(id).to_owned();
        let created = UNIX_EPOCH + Duration::from_secs(u64::try_from(image.created).unwrap_or(0));
        let created = format_rfc3339(created);
        let created = created.get(..19).unwrap_or(&created).replace('T', " ");
        let size = format_bytes_short(u64::try_from(image.size).unwrap_or(0));
        let names = if image.tags.is_empty() {
            vec!["<none>".to_owned()]
        } else {
            image.tags.clone()
        };
        for name in names {
            rows.push([id.clone(), name, created.clone(), size.clone()]);
        }
    }
    let mut widths = [0; 4];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in &rows {
        let line = format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
        println!("{}", line.trim_end());
    }
}
