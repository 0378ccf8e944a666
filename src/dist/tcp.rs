//! Ranks in different processes, on one machine or several: a rendezvous over TCP at start
//! (node 0 listens, the others connect; each says who it is and which run it belongs to), then
//! collectives through node 0 (each rank sends its values to node 0, which sends every rank's
//! to every rank). For CPU ranks across machines; GPUs will exchange NCCL's id over the same
//! rendezvous.

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};

use super::Comm;

/// The first bytes every connection sends: the protocol and its version.
const MAGIC: &[u8; 8] = b"SPDRUN1\n";
/// How long node 0 waits for a new connection to say who it is.
const HELLO_WAIT: Duration = Duration::from_secs(10);
/// How long to wait between attempts to reach node 0, which may not be listening yet.
const RETRY: Duration = Duration::from_millis(200);

/// Where this process stands in a multi-node run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    pub nodes: usize,
    pub node_rank: usize,
    /// node 0's address, `host:port`: it listens there, the others connect to it.
    pub rendezvous: String,
    /// The most time the rendezvous may take before the run ends with an error.
    pub timeout: Duration,
}

impl NodeSpec {
    /// The spec from explicit values, or else from the variables a cluster launcher sets:
    /// torchrun's `WORLD_SIZE`, `RANK`, `MASTER_ADDR`, `MASTER_PORT` (one process per node:
    /// `--nproc-per-node 1`) or Slurm's `SLURM_NTASKS`, `SLURM_PROCID` (`srun
    /// --ntasks-per-node 1`, with `MASTER_ADDR` exported by the batch script). None for a
    /// single-node run.
    pub fn resolve(
        nodes: Option<usize>,
        node_rank: Option<usize>,
        rendezvous: Option<String>,
        timeout: Duration,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<NodeSpec>> {
        let number = |names: &[&str]| -> Result<Option<usize>> {
            for name in names {
                if let Some(text) = env(name) {
                    let value = (text.trim().parse())
                        .with_context(|| format!("${name} = {text:?} is not a whole number"))?;
                    return Ok(Some(value));
                }
            }
            Ok(None)
        };
        let nodes = match nodes {
            Some(n) => n,
            None => number(&["WORLD_SIZE", "SLURM_NTASKS"])?.unwrap_or(1),
        };
        ensure!(nodes > 0, "--nodes must be positive");
        if nodes == 1 {
            return Ok(None);
        }
        let node_rank = match node_rank {
            Some(r) => r,
            None => number(&["RANK", "SLURM_PROCID"])?
                .context("a multi-node run needs --node-rank (or $RANK or $SLURM_PROCID)")?,
        };
        ensure!(
            node_rank < nodes,
            "--node-rank {node_rank} is not below --nodes {nodes}"
        );
        let rendezvous = match rendezvous {
            Some(address) => address,
            None => {
                let host = env("MASTER_ADDR").context(
                    "a multi-node run needs --rendezvous HOST:PORT (or $MASTER_ADDR and \
                     $MASTER_PORT): node 0's address",
                )?;
                let port = env("MASTER_PORT").unwrap_or_else(|| "29500".into());
                format!("{host}:{port}")
            }
        };
        Ok(Some(NodeSpec {
            nodes,
            node_rank,
            rendezvous,
            timeout,
        }))
    }
}

/// The time left before `deadline`, or an error saying what did not happen in time.
fn left(deadline: Instant, what: impl FnOnce() -> String) -> Result<Duration> {
    let now = Instant::now();
    ensure!(now < deadline, "{}", what());
    Ok(deadline - now)
}

fn write_u64(w: &mut impl Write, value: u64) -> std::io::Result<()> {
    w.write_all(&value.to_le_bytes())
}

fn read_u64(r: &mut impl Read) -> std::io::Result<u64> {
    let mut bytes = [0; 8];
    r.read_exact(&mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

/// A length-prefixed run of f32 values.
fn write_values(w: &mut impl Write, values: &[f32]) -> std::io::Result<()> {
    write_u64(w, values.len() as u64)?;
    w.write_all(bytemuck::cast_slice(values))
}

/// Most values one message may carry (64 GiB): a bad length must not become an allocation.
const MAX_VALUES: u64 = 1 << 34;

fn read_values(r: &mut impl Read) -> std::io::Result<Vec<f32>> {
    let len = read_u64(r)?;
    if len > MAX_VALUES {
        return Err(std::io::Error::other(format!(
            "a message of {len} values: not a speedrun peer, or a corrupt stream"
        )));
    }
    let mut bytes = vec![0u8; len as usize * 4];
    r.read_exact(&mut bytes)?;
    Ok(bytemuck::pod_collect_to_vec(&bytes))
}

/// A length-prefixed UTF-8 message (a refusal's reason; empty: accepted).
fn write_text(w: &mut impl Write, text: &str) -> std::io::Result<()> {
    write_u64(w, text.len() as u64)?;
    w.write_all(text.as_bytes())
}

fn read_text(r: &mut impl Read) -> std::io::Result<String> {
    let len = read_u64(r)?.min(1 << 16) as usize;
    let mut bytes = vec![0u8; len];
    r.read_exact(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// A connection to one peer, buffered both ways.
struct Link {
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
}

impl Link {
    fn new(stream: TcpStream) -> Result<Link> {
        stream.set_nodelay(true)?;
        Ok(Link {
            reader: BufReader::new(stream.try_clone()?),
            writer: BufWriter::new(stream),
        })
    }

    fn stream(&self) -> &TcpStream {
        self.writer.get_ref()
    }
}

/// This process's rank among the processes of a run, connected through node 0.
pub struct TcpComm {
    rank: usize,
    size: usize,
    /// Node 0: a link to every other rank (index r − 1). The others: a link to node 0.
    links: Mutex<Vec<Link>>,
}

/// What the nodes of one run must agree on: the protocol, how many they are, and a digest of
/// the run's settings.
fn hello(spec: &NodeSpec, run_digest: u64) -> Vec<u8> {
    let mut bytes = MAGIC.to_vec();
    for value in [spec.nodes as u64, spec.node_rank as u64, run_digest] {
        bytes.extend(value.to_le_bytes());
    }
    bytes
}

impl TcpComm {
    /// Meets the other nodes of the run. Node 0 waits until every other node has connected
    /// and agreed (same node count, a rank of its own, the same `run`: the build and settings
    /// that must match), then tells each it may start; the others connect (retrying until node
    /// 0 listens) and wait for that. Anything not done within the spec's timeout is an error
    /// naming what is missing.
    pub fn rendezvous(spec: &NodeSpec, run: &str) -> Result<TcpComm> {
        let run_digest = crate::hash::fnv1a(run.as_bytes());
        let deadline = Instant::now() + spec.timeout;
        let address = resolve(&spec.rendezvous)?;
        let links = if spec.node_rank == 0 {
            Self::accept_all(spec, address, run_digest, deadline)?
        } else {
            vec![Self::join(spec, address, run_digest, deadline)?]
        };
        for link in &links {
            // Collectives wait as long as the slowest rank's step. A peer process that dies
            // closes its connection, which ends the wait; a peer machine that vanishes stops
            // answering keepalive probes, which ends it within about two minutes.
            link.stream().set_read_timeout(None)?;
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(Duration::from_secs(60))
                .with_interval(Duration::from_secs(10))
                .with_retries(6);
            socket2::SockRef::from(link.stream()).set_tcp_keepalive(&keepalive)?;
        }
        Ok(TcpComm {
            rank: spec.node_rank,
            size: spec.nodes,
            links: Mutex::new(links),
        })
    }

    fn accept_all(
        spec: &NodeSpec,
        address: SocketAddr,
        run_digest: u64,
        deadline: Instant,
    ) -> Result<Vec<Link>> {
        // Every interface, at the rendezvous port.
        let bind = SocketAddr::new(
            if address.is_ipv4() {
                std::net::Ipv4Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            },
            address.port(),
        );
        let listener = TcpListener::bind(bind)
            .with_context(|| format!("node 0 cannot listen on port {}", address.port()))?;
        listener.set_nonblocking(true)?;
        let mut peers: Vec<Option<Link>> = (1..spec.nodes).map(|_| None).collect();
        let missing = |peers: &[Option<Link>]| -> String {
            (peers.iter().enumerate())
                .filter(|(_, p)| p.is_none())
                .map(|(i, _)| (i + 1).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        while peers.iter().any(Option::is_none) {
            let (stream, from) = match listener.accept() {
                Ok(connection) => connection,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    left(deadline, || {
                        format!(
                            "rendezvous at {}: node(s) {} did not join within {:?}",
                            spec.rendezvous,
                            missing(&peers),
                            spec.timeout
                        )
                    })?;
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(e) => return Err(e).context("rendezvous: accepting a connection"),
            };
            stream.set_nonblocking(false)?;
            // A node says who it is at once; a silent client must not hold up the others.
            let wait = left(deadline, || "rendezvous timed out".into())?;
            stream.set_read_timeout(Some(wait.min(HELLO_WAIT)))?;
            let mut link = Link::new(stream)?;
            let mut theirs = vec![0u8; MAGIC.len() + 24];
            if link.reader.read_exact(&mut theirs).is_err() || !theirs.starts_with(MAGIC) {
                // Not one of ours (a port scanner, a stale client): ignore it.
                continue;
            }
            let field = |i: usize| {
                let at = MAGIC.len() + 8 * i;
                u64::from_le_bytes(theirs[at..at + 8].try_into().expect("8 bytes"))
            };
            let (nodes, rank, digest) = (field(0) as usize, field(1) as usize, field(2));
            let refusal = if nodes != spec.nodes {
                Some(format!(
                    "node {rank} ({from}) was started with --nodes {nodes}, node 0 with {}",
                    spec.nodes
                ))
            } else if digest != run_digest {
                Some(format!(
                    "node {rank} ({from}) has another build or other training settings than \
                     node 0: start every node with the same binary and flags"
                ))
            } else if rank == 0 || rank >= spec.nodes || peers[rank - 1].is_some() {
                Some(format!(
                    "node {from} claims rank {rank}, which is taken or invalid"
                ))
            } else {
                None
            };
            if let Some(reason) = refusal {
                let _ = write_text(&mut link.writer, &reason).and_then(|()| link.writer.flush());
                bail!("rendezvous: {reason}");
            }
            peers[rank - 1] = Some(link);
        }
        let mut links: Vec<Link> = peers.into_iter().flatten().collect();
        for link in &mut links {
            write_text(&mut link.writer, "")?;
            link.writer.flush()?;
        }
        Ok(links)
    }

    fn join(
        spec: &NodeSpec,
        address: SocketAddr,
        run_digest: u64,
        deadline: Instant,
    ) -> Result<Link> {
        let unreachable = || {
            format!(
                "rendezvous: node 0 at {} did not answer within {:?}",
                spec.rendezvous, spec.timeout
            )
        };
        let stream = loop {
            let wait = left(deadline, unreachable)?;
            match TcpStream::connect_timeout(&address, wait.min(Duration::from_secs(5))) {
                Ok(stream) => break stream,
                Err(_) => std::thread::sleep(RETRY.min(wait)),
            }
        };
        stream.set_read_timeout(Some(left(deadline, unreachable)?))?;
        let mut link = Link::new(stream)?;
        link.writer.write_all(&hello(spec, run_digest))?;
        link.writer.flush()?;
        let answer = read_text(&mut link.reader).map_err(|e| {
            anyhow!(
                "rendezvous: no answer from node 0 at {} ({e})",
                spec.rendezvous
            )
        })?;
        ensure!(
            answer.is_empty(),
            "rendezvous: node 0 refused this node: {answer}"
        );
        Ok(link)
    }

    fn links(&self) -> std::sync::MutexGuard<'_, Vec<Link>> {
        self.links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The first address `host:port` resolves to.
fn resolve(address: &str) -> Result<SocketAddr> {
    (address.to_socket_addrs())
        .with_context(|| format!("cannot resolve the rendezvous address {address:?} (HOST:PORT)"))?
        .next()
        .with_context(|| format!("the rendezvous address {address:?} resolves to nothing"))
}

/// A lost peer, named: what a collective fails with when a node dies.
fn lost(rank: usize, e: std::io::Error) -> anyhow::Error {
    anyhow!("lost node {rank} (it failed or stopped): {e}")
}

impl Comm for TcpComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn exchange(&self, data: &[f32], read: &mut dyn FnMut(&[Vec<f32>])) -> Result<()> {
        let mut links = self.links();
        let mut slots = Vec::with_capacity(self.size);
        if self.rank == 0 {
            slots.push(data.to_vec());
            for (i, link) in links.iter_mut().enumerate() {
                let values = read_values(&mut link.reader).map_err(|e| lost(i + 1, e))?;
                // Every collective has each rank send as many values as the others.
                ensure!(
                    values.len() == data.len(),
                    "node {} sent {} values where node 0 has {}: the nodes are out of step",
                    i + 1,
                    values.len(),
                    data.len()
                );
                slots.push(values);
            }
            for (i, link) in links.iter_mut().enumerate() {
                let sent: std::io::Result<()> = (slots.iter())
                    .try_for_each(|slot| write_values(&mut link.writer, slot))
                    .and_then(|()| link.writer.flush());
                sent.map_err(|e| lost(i + 1, e))?;
            }
        } else {
            let link = &mut links[0];
            (write_values(&mut link.writer, data).and_then(|()| link.writer.flush()))
                .map_err(|e| lost(0, e))?;
            for _ in 0..self.size {
                slots.push(read_values(&mut link.reader).map_err(|e| lost(0, e))?);
            }
        }
        read(&slots);
        Ok(())
    }

    fn abort(&self) {
        // Closing the connections ends every peer's pending and later collectives.
        for link in self.links().iter() {
            let _ = link.stream().shutdown(std::net::Shutdown::Both);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn spec(nodes: usize, node_rank: usize, port: u16, timeout_ms: u64) -> NodeSpec {
        NodeSpec {
            nodes,
            node_rank,
            rendezvous: format!("127.0.0.1:{port}"),
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    /// Runs `body` on `nodes` ranks meeting at a fresh port, each identifying its run by
    /// `run(rank)`.
    fn on_nodes<T: Send>(
        nodes: usize,
        run: impl Fn(usize) -> String + Sync,
        body: impl Fn(Result<TcpComm>) -> T + Sync,
    ) -> Vec<T> {
        let port = free_port();
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..nodes)
                .map(|r| {
                    let (run, body) = (&run, &body);
                    s.spawn(move || body(TcpComm::rendezvous(&spec(nodes, r, port, 5000), &run(r))))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn collectives_over_tcp_give_what_their_definitions_say() {
        let out = on_nodes(
            3,
            |_| "run".into(),
            |comm| {
                let c = comm.unwrap();
                let mut sum = vec![c.rank() as f32 + 1.0, 10.0];
                c.all_reduce_sum(&mut sum).unwrap();
                let mut gathered = [0.0; 3];
                c.all_gather(&[c.rank() as f32], &mut gathered).unwrap();
                let x = c.broadcast_f64(1.0 / (3.0 + c.rank() as f64), 2).unwrap();
                let keepalive = (c.links().iter())
                    .all(|l| socket2::SockRef::from(l.stream()).keepalive().unwrap());
                (sum, gathered, x, keepalive)
            },
        );
        for (sum, gathered, x, keepalive) in out {
            assert!(keepalive, "dead machines are detected by keepalive probes");
            assert_eq!(sum, vec![6.0, 30.0]);
            assert_eq!(gathered, [0.0, 1.0, 2.0]);
            assert_eq!(x, 0.2);
        }
    }

    #[test]
    fn nodes_with_other_settings_are_refused() {
        let out = on_nodes(
            2,
            |r| format!("run {r}"),
            |comm| comm.err().map(|e| format!("{e:#}")),
        );
        assert!(
            out[0].as_ref().unwrap().contains("node 1 (127.0.0.1"),
            "{out:?}"
        );
        assert!(
            out[0].as_ref().unwrap().contains("other training settings"),
            "{out:?}"
        );
        assert!(
            out[1]
                .as_ref()
                .unwrap()
                .contains("node 0 refused this node"),
            "{out:?}"
        );
    }

    #[test]
    fn a_rendezvous_that_never_completes_ends_in_time() {
        let port = free_port();
        let started = Instant::now();
        // Node 0 alone of 3.
        let err = format!(
            "{:#}",
            TcpComm::rendezvous(&spec(3, 0, port, 300), "run")
                .err()
                .unwrap()
        );
        assert!(
            err.contains("node(s) 1, 2 did not join within 300ms"),
            "{err}"
        );
        // Node 1 with nobody listening.
        let err = format!(
            "{:#}",
            TcpComm::rendezvous(&spec(2, 1, port, 300), "run")
                .err()
                .unwrap()
        );
        assert!(err.contains("did not answer within 300ms"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_node_that_fails_ends_the_others_collectives() {
        let out = on_nodes(
            3,
            |_| "run".into(),
            |comm| {
                let c = comm.unwrap();
                let mut x = [1.0];
                c.all_reduce_sum(&mut x).unwrap();
                if c.rank() == 2 {
                    c.abort();
                    return None;
                }
                Some(format!("{:#}", c.all_reduce_sum(&mut x).unwrap_err()))
            },
        );
        assert!(out[0].as_ref().unwrap().contains("lost node 2"), "{out:?}");
        assert!(out[1].as_ref().unwrap().contains("lost node 0"), "{out:?}");
    }

    #[test]
    fn the_spec_comes_from_flags_or_a_launchers_variables() {
        let none = |_: &str| None;
        let t = Duration::from_secs(9);
        assert_eq!(NodeSpec::resolve(None, None, None, t, none).unwrap(), None);
        let flags = NodeSpec::resolve(Some(2), Some(1), Some("h:1".into()), t, none).unwrap();
        assert_eq!(
            flags,
            Some(NodeSpec {
                nodes: 2,
                node_rank: 1,
                rendezvous: "h:1".into(),
                timeout: t
            })
        );
        let torchrun = |name: &str| {
            [("WORLD_SIZE", "4"), ("RANK", "3"), ("MASTER_ADDR", "n0")]
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        };
        let spec = NodeSpec::resolve(None, None, None, t, torchrun)
            .unwrap()
            .unwrap();
        assert_eq!(
            (spec.nodes, spec.node_rank, spec.rendezvous.as_str()),
            (4, 3, "n0:29500")
        );
        let slurm = |name: &str| {
            [
                ("SLURM_NTASKS", "2"),
                ("SLURM_PROCID", "0"),
                ("MASTER_ADDR", "n0"),
                ("MASTER_PORT", "7"),
            ]
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
        };
        let spec = NodeSpec::resolve(None, None, None, t, slurm)
            .unwrap()
            .unwrap();
        assert_eq!(
            (spec.nodes, spec.node_rank, spec.rendezvous.as_str()),
            (2, 0, "n0:7")
        );
        let err = NodeSpec::resolve(Some(2), None, Some("h:1".into()), t, none).unwrap_err();
        assert!(format!("{err}").contains("--node-rank"));
        let err = NodeSpec::resolve(Some(2), Some(2), Some("h:1".into()), t, none).unwrap_err();
        assert!(format!("{err}").contains("not below --nodes 2"));
    }
}
