//! The WebSocket URL template: which server to connect to and the path of each client.

use std::net::{Ipv4Addr, SocketAddr};

#[derive(Debug, Clone)]
pub struct Target {
    /// Each server's address and Host header: client i goes to server i mod their number
    /// (several instances of a server, without a balancer in front to measure as well).
    servers: Vec<(SocketAddr, String)>,
    /// The path and query, with placeholders `{token}`, `{i}`, `{topic}`, `{topics_csv}`.
    path: String,
}

impl Target {
    /// `ws://IP:PORT/path?query`, or several such URLs with the same path, comma-separated.
    pub fn parse(urls: &str) -> Result<Target, String> {
        let mut servers = Vec::new();
        let mut path = None;
        for (n, url) in urls.split(",ws://").enumerate() {
            let url = match n {
                0 => url.to_owned(),
                _ => format!("ws://{url}"),
            };
            let one = Target::parse_one(&url)?;
            if path.get_or_insert_with(|| one.path.clone()) != &one.path {
                return Err(format!("{urls}: every URL must have the same path"));
            }
            servers.extend(one.servers);
        }
        Ok(Target {
            servers,
            path: path.unwrap_or_default(),
        })
    }

    /// The address and Host header of client `client`'s server.
    pub fn server_for(&self, client: usize) -> (SocketAddr, &str) {
        let (address, host) = &self.servers[client % self.servers.len()];
        (*address, host)
    }

    /// `ws://IP:PORT/path?query` (`localhost` stands for 127.0.0.1; no TLS: the tool
    /// measures the server, not a TLS terminator).
    fn parse_one(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| format!("{url}: the URL must start with ws://"))?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = authority
            .rsplit_once(':')
            .ok_or_else(|| format!("{url}: the URL needs a port"))?;
        let ip: Ipv4Addr = if host == "localhost" {
            Ipv4Addr::LOCALHOST
        } else {
            host.parse()
                .map_err(|_| format!("{url}: the host must be an IPv4 address or localhost"))?
        };
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{url}: bad port {port}"))?;
        Ok(Target {
            servers: vec![(SocketAddr::from((ip, port)), authority.to_owned())],
            path: if path.is_empty() { "/" } else { path }.to_owned(),
        })
    }

    pub fn path_for(&self, client: usize, token: Option<&str>, topics: &[String]) -> String {
        let mut path = self.path.replace("{i}", &client.to_string());
        if path.contains("{token}") {
            path = path.replace("{token}", token.unwrap_or(""));
        }
        if path.contains("{topic}") {
            path = path.replace("{topic}", topics.first().map_or("", String::as_str));
        }
        if path.contains("{topics_csv}") {
            path = path.replace("{topics_csv}", &topics.join(","));
        }
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_fills_templates() {
        let target = Target::parse("ws://127.0.0.1:18080/ws?token={token}&c={i}").unwrap();
        assert_eq!(
            target.server_for(5),
            ("127.0.0.1:18080".parse().unwrap(), "127.0.0.1:18080")
        );
        assert_eq!(target.path_for(3, Some("abc"), &[]), "/ws?token=abc&c=3");
        let nchan = Target::parse("ws://localhost:18083/sub?id={topics_csv}").unwrap();
        let topics = vec!["job:1".to_owned(), "job:2".to_owned()];
        assert_eq!(nchan.path_for(0, None, &topics), "/sub?id=job:1,job:2");
        assert!(Target::parse("http://127.0.0.1:1/").is_err());
        assert!(Target::parse("ws://example.com:80/").is_err());
        let spread = Target::parse("ws://127.0.0.1:1/ws,ws://127.0.0.1:2/ws").unwrap();
        assert_eq!(spread.server_for(0).0.port(), 1);
        assert_eq!(spread.server_for(3).0.port(), 2);
        assert!(Target::parse("ws://127.0.0.1:1/ws,ws://127.0.0.1:2/other").is_err());
    }
}
