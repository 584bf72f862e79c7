//! Probes that reach for the host's network: its loopback listeners and its interfaces.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{argument, invalid_arguments, report, Armed, Finding, Probe};
use crate::probe::executor::{Execution, Invocation};
use crate::probe::host::{Canary, Host, Listener};
use crate::probe::system::{self, error_name, Interface};

/// How long the probe waits for a connection to the host's loopback.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Connects to a listener on the host's 127.0.0.1.
pub struct ReachHostLoopback;

#[derive(Serialize, Deserialize)]
struct ConnectReport {
    connected: bool,
    error: Option<String>,
}

struct LoopbackArmed {
    listener: Listener,
}

impl Probe for ReachHostLoopback {
    fn name(&self) -> &'static str {
        "reach-host-loopback"
    }

    fn attempt(&self) -> &'static str {
        "connect to a TCP listener on the host's 127.0.0.1"
    }

    fn arm(&self, _host: &Host) -> Result<Box<dyn Armed>, String> {
        let listener =
            Listener::open().map_err(|error| format!("cannot listen on 127.0.0.1: {error}"))?;
        Ok(Box::new(LoopbackArmed { listener }))
    }

    fn inside(&self, args: &[String]) -> Value {
        let port: u16 = match argument(args, 0) {
            Ok(port) => port,
            Err(message) => return invalid_arguments(message),
        };
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let connected = TcpStream::connect_timeout(&address, CONNECT_TIMEOUT);
        report(ConnectReport {
            connected: connected.is_ok(),
            error: connected.err().map(|error| error_name(&error)),
        })
    }
}

impl Armed for LoopbackArmed {
    fn invocation(&self) -> Invocation<'_> {
        Invocation::new(vec![self.listener.port().to_string()])
    }

    fn canaries(&self) -> Vec<Canary> {
        vec![self.listener.describe()]
    }

    fn judge(&mut self, execution: &Execution) -> Finding {
        let port = self.listener.port();
        if self.listener.was_reached() {
            return Finding::escaped(format!(
                "connected to the host's listener on 127.0.0.1:{port}"
            ));
        }
        match execution.result::<ConnectReport>() {
            Some(ConnectReport {
                connected: true, ..
            }) => Finding::contained(format!(
                "127.0.0.1:{port} answered, but not the host's listener: the loopback is another"
            )),
            Some(ConnectReport { error, .. }) => Finding::contained(format!(
                "connect to 127.0.0.1:{port}: {}",
                error.unwrap_or_else(|| "failed".to_owned())
            )),
            None => Finding::no_result(execution),
        }
    }
}

/// Lists the network interfaces and compares them with the host's.
pub struct SeeNetworkInterfaces;

#[derive(Serialize, Deserialize)]
struct InterfacesReport {
    interfaces: Vec<Interface>,
    error: Option<String>,
}

struct InterfacesArmed {
    /// The host's interfaces other than lo.
    host: Vec<Interface>,
}

impl Probe for SeeNetworkInterfaces {
    fn name(&self) -> &'static str {
        "see-network-interfaces"
    }

    fn attempt(&self) -> &'static str {
        "list the network interfaces, and look for the host's other than lo"
    }

    fn arm(&self, _host: &Host) -> Result<Box<dyn Armed>, String> {
        let interfaces = system::interfaces()
            .map_err(|error| format!("cannot list the host's interfaces: {error}"))?;
        let host: Vec<Interface> = interfaces
            .into_iter()
            .filter(|interface| interface.name != "lo")
            .collect();
        if host.is_empty() {
            return Err("the host has no network interface other than lo to look for".to_owned());
        }
        Ok(Box::new(InterfacesArmed { host }))
    }

    fn inside(&self, _args: &[String]) -> Value {
        report(match system::interfaces() {
            Ok(interfaces) => InterfacesReport {
                interfaces,
                error: None,
            },
            Err(error) => InterfacesReport {
                interfaces: Vec::new(),
                error: Some(error_name(&error)),
            },
        })
    }
}

impl Armed for InterfacesArmed {
    fn invocation(&self) -> Invocation<'_> {
        Invocation::new(Vec::new())
    }

    fn canaries(&self) -> Vec<Canary> {
        Vec::new()
    }

    fn judge(&mut self, execution: &Execution) -> Finding {
        let Some(report) = execution.result::<InterfacesReport>() else {
            return Finding::no_result(execution);
        };
        // An interface of the host has the same index, name and hardware address. A
        // sandbox's own interface, even one named eth0, differs in at least one of them.
        let shared: Vec<&str> = report
            .interfaces
            .iter()
            .filter(|seen| self.host.contains(seen))
            .map(|seen| seen.name.as_str())
            .collect();
        if !shared.is_empty() {
            return Finding::escaped(format!("sees the host's interfaces {}", shared.join(", ")));
        }
        if let Some(error) = report.error {
            return Finding::contained(format!("cannot list interfaces: {error}"));
        }
        let names: Vec<&str> = report
            .interfaces
            .iter()
            .map(|seen| seen.name.as_str())
            .collect();
        match names.as_slice() {
            [] => Finding::contained("sees no interface"),
            names => Finding::contained(format!("sees only its own {}", names.join(", "))),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::probe::probes::testing::{executed, host, run_unconfined};
    use crate::probe::probes::Verdict;

    #[test]
    fn loopback_judged_escaped_when_listener_reached() {
        let dir = tempfile::tempdir().unwrap();
        let mut armed = ReachHostLoopback.arm(&host(&dir)).unwrap();
        let refused =
            executed(json!({ "result": { "connected": false, "error": "ECONNREFUSED" } }));
        assert_eq!(armed.judge(&refused).verdict, Verdict::Contained);
        let execution = run_unconfined(&ReachHostLoopback, armed.as_ref());
        assert_eq!(armed.judge(&execution).verdict, Verdict::Escaped);
    }

    #[test]
    fn interfaces_judged_by_index_name_and_address() {
        let dir = tempfile::tempdir().unwrap();
        let Ok(mut armed) = SeeNetworkInterfaces.arm(&host(&dir)) else {
            eprintln!("skipped: this host has no network interface other than lo");
            return;
        };
        let execution = run_unconfined(&SeeNetworkInterfaces, armed.as_ref());
        assert_eq!(armed.judge(&execution).verdict, Verdict::Escaped);
        let own_eth0 = json!({ "result": { "interfaces": [
            { "index": 1, "name": "lo", "hardware_address": "00:00:00:00:00:00" },
            { "index": 2, "name": "eth0", "hardware_address": "02:00:00:00:00:99" },
        ], "error": null }});
        assert_eq!(armed.judge(&executed(own_eth0)).verdict, Verdict::Contained);
    }
}
