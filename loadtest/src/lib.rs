//! The load generator's parts: the target server, a lean protocol-7 client, a signed HTTP
//! API client, measurements (latency histograms, /proc readings), and the scenarios.

pub mod api;
pub mod client;
pub mod fake_fcm;
pub mod measure;
pub mod report;
pub mod scenario;

use std::net::{IpAddr, SocketAddr};

use clap::Args;

/// The server under test and the credentials of one of its apps.
#[derive(Args, Clone, Debug)]
pub struct Target {
    /// Server host (IP address).
    #[arg(long, default_value = "127.0.0.1", global = true)]
    pub host: IpAddr,
    /// Server port.
    #[arg(long, default_value_t = 6001, global = true)]
    pub port: u16,
    #[arg(long, default_value = "1", global = true)]
    pub app_id: String,
    #[arg(long, default_value = "app-key", global = true)]
    pub key: String,
    #[arg(long, default_value = "app-secret", global = true)]
    pub secret: String,
    /// Extra server addresses (host:port) for multi-node runs; clients are spread over all.
    #[arg(long = "node", global = true)]
    pub nodes: Vec<SocketAddr>,
    /// Local source addresses to spread client sockets over, e.g. 127.0.0.1,127.0.0.2, so
    /// tens of thousands of connections fit in the ephemeral port range.
    #[arg(long, value_delimiter = ',', global = true)]
    pub source_ips: Vec<IpAddr>,
    /// Where HTTP API requests go (default: host:port), e.g. another node of the cluster, so
    /// that every delivery crosses from one node to another.
    #[arg(long, global = true)]
    pub api: Option<SocketAddr>,
    /// The server's pid, to report its RSS and CPU time from /proc.
    #[arg(long, global = true)]
    pub server_pid: Option<u32>,
}

impl Target {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    /// Where the HTTP API is called.
    pub fn api_addr(&self) -> SocketAddr {
        self.api.unwrap_or_else(|| self.addr())
    }

    /// The i-th node, round-robin over the main address and `--node`s.
    pub fn node(&self, i: usize) -> SocketAddr {
        let n = 1 + self.nodes.len();
        match i % n {
            0 => self.addr(),
            k => self.nodes[k - 1],
        }
    }

    pub fn source_ip(&self, i: usize) -> Option<IpAddr> {
        (!self.source_ips.is_empty()).then(|| self.source_ips[i % self.source_ips.len()])
    }
}
