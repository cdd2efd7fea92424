//! The facts' side of the cascade: the writer (facts to the rooms' Redis streams, in
//! order, held in a bounded queue while Redis is away; hello: count the copies, start
//! reading) and the reader (one blocking `XREAD` over the streams of the rooms with
//! copies here, resuming where it was).

use super::*;

/// Rooms whose streams are read, with the last entry id read.
pub(super) type Reading = Arc<Mutex<HashMap<String, String>>>;

/// What the link loop asks of Redis.
#[derive(Debug)]
pub(super) enum Write {
    /// A new copy of `room` on worker `worker` says hello: announce it, count the copies
    /// that will answer, start reading the room's stream.
    Hello { room: Arc<RoomId>, worker: u8 },
    /// A fact (or the copy's end) from `worker`, to every copy or to one (`to`).
    Entry {
        room: String,
        worker: u8,
        to: Option<(String, u8)>,
        json: String,
    },
    /// The copy on `worker` closed; `last`: no copy of the room is left on this node.
    Closed {
        room: String,
        worker: u8,
        last: bool,
    },
}

/// Writes facts to Redis, in order, holding them while Redis is away.
pub(super) struct Writer {
    pub(super) node: String,
    pub(super) relay: String,
    pub(super) client: redis::Client,
    pub(super) sfu: Sfu,
    pub(super) reading: Reading,
    pub(super) ttl: Duration,
    pub(super) heartbeat: Duration,
    pub(super) shared: Arc<Shared>,
}

impl Writer {
    pub(super) async fn run(self, mut rx: mpsc::Receiver<Write>) {
        let mut queue: VecDeque<Write> = VecDeque::new();
        let mut conn: Option<redis::aio::MultiplexedConnection> = None;
        let mut copies: BTreeSet<(String, u8)> = BTreeSet::new();
        let mut beat = tokio::time::interval(self.heartbeat);
        let mut down_since: Option<Instant> = None;
        loop {
            tokio::select! {
                w = rx.recv() => match w {
                    Some(w) => {
                        self.enqueue(&mut queue, w);
                        while let Ok(w) = rx.try_recv() {
                            self.enqueue(&mut queue, w);
                        }
                    }
                    None => return,
                },
                _ = beat.tick() => {}
            }
            if conn.is_none() {
                conn = self.connect().await;
            }
            let Some(c) = conn.as_mut() else {
                down_since.get_or_insert_with(|| {
                    tracing::warn!("cascade: Redis unreachable; room facts wait for it");
                    Instant::now()
                });
                self.hellos_without_redis(&mut queue, &mut copies);
                continue;
            };
            let mut failed = false;
            while let Some(w) = queue.front() {
                match self.write(c, w, &mut copies).await {
                    Ok(()) => {
                        queue.pop_front();
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "cascade: Redis write failed");
                        failed = true;
                        break;
                    }
                }
            }
            if !failed && let Err(e) = self.refresh(c, &copies).await {
                tracing::debug!(error = %e, "cascade: Redis refresh failed");
                failed = true;
            }
            if failed {
                conn = None;
                down_since.get_or_insert_with(|| {
                    tracing::warn!("cascade: Redis unreachable; room facts wait for it");
                    Instant::now()
                });
                self.hellos_without_redis(&mut queue, &mut copies);
            } else if let Some(since) = down_since.take() {
                tracing::info!(
                    after_ms = since.elapsed().as_millis() as u64,
                    "cascade: Redis is back; queued room facts written"
                );
            }
        }
    }

    fn enqueue(&self, queue: &mut VecDeque<Write>, w: Write) {
        if queue.len() >= WRITE_QUEUE {
            queue.pop_front();
            self.shared
                .counters
                .facts_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
        queue.push_back(w);
    }

    async fn connect(&self) -> Option<redis::aio::MultiplexedConnection> {
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(500)));
        self.client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .ok()
    }

    /// While Redis is away, a new copy waits for nobody: its hello is kept for later (the
    /// others answer then) and it reads its room from now on.
    /// The copy is listed among the room's copies (`copies`) by the first heartbeat that
    /// reaches Redis, so that later copies wait for its snapshot too.
    fn hellos_without_redis(
        &self,
        queue: &mut VecDeque<Write>,
        copies: &mut BTreeSet<(String, u8)>,
    ) {
        for w in queue.iter_mut() {
            if let Write::Hello { room, worker } = w {
                copies.insert((room.to_string(), *worker));
                if self.start_reading(room.as_str(), &format!("{}-0", unix_ms())) {
                    tracing::debug!(room = %room, "cascade: reading a room from now on");
                }
                self.expect(room, *worker, 0);
                // Said once: the hello itself goes when Redis is back.
                *w = Write::Entry {
                    room: room.to_string(),
                    worker: *worker,
                    to: None,
                    json: serde_json::to_string(&Entry::Fact(Box::new(Fact::Hello)))
                        .unwrap_or_default(),
                };
            }
        }
    }

    fn start_reading(&self, room: &str, from: &str) -> bool {
        let mut r = self.reading.lock().unwrap_or_else(|e| e.into_inner());
        if r.contains_key(room) {
            return false;
        }
        r.insert(room.to_string(), from.to_string());
        true
    }

    fn expect(&self, room: &Arc<RoomId>, worker: u8, n: usize) {
        self.sfu.deliver(Link {
            room: room.clone(),
            from: ALL_REMOTE,
            to: worker as usize,
            frame: Frame::Expect(n),
        });
    }

    async fn xadd(
        &self,
        c: &mut redis::aio::MultiplexedConnection,
        room: &str,
        worker: u8,
        to: &Option<(String, u8)>,
        json: &str,
    ) -> redis::RedisResult<String> {
        let to = to
            .as_ref()
            .map(|(n, w)| format!("{n}/{w}"))
            .unwrap_or_default();
        let id: String = redis::cmd("XADD")
            .arg(stream_key(room))
            .arg("MAXLEN")
            .arg("~")
            .arg(STREAM_LEN)
            .arg("*")
            .arg("n")
            .arg(&self.node)
            .arg("a")
            .arg(&self.relay)
            .arg("w")
            .arg(worker)
            .arg("t")
            .arg(to)
            .arg("f")
            .arg(json)
            .query_async(c)
            .await?;
        self.shared
            .counters
            .facts_written
            .fetch_add(1, Ordering::Relaxed);
        Ok(id)
    }

    async fn write(
        &self,
        c: &mut redis::aio::MultiplexedConnection,
        w: &Write,
        copies: &mut BTreeSet<(String, u8)>,
    ) -> redis::RedisResult<()> {
        match w {
            Write::Hello { room, worker } => {
                let json =
                    serde_json::to_string(&Entry::Fact(Box::new(Fact::Hello))).unwrap_or_default();
                let id = self.xadd(c, room.as_str(), *worker, &None, &json).await?;
                // Read from just before the hello: the answers come after it.
                self.start_reading(room.as_str(), &id);
                let now = unix_ms();
                let member = format!("{}/{}", self.node, worker);
                let key = copies_key(room.as_str());
                let (_, present): ((), Vec<String>) = redis::pipe()
                    .cmd("ZADD")
                    .arg(&key)
                    .arg(now + self.ttl.as_millis() as u64)
                    .arg(&member)
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(&key)
                    .arg(self.ttl.as_millis() as u64 * 4)
                    .cmd("ZRANGEBYSCORE")
                    .arg(&key)
                    .arg(now)
                    .arg("+inf")
                    .query_async(c)
                    .await?;
                let mine = format!("{}/", self.node);
                let others = present.iter().filter(|m| !m.starts_with(&mine)).count();
                copies.insert((room.to_string(), *worker));
                self.expect(room, *worker, others);
            }
            Write::Entry {
                room,
                worker,
                to,
                json,
            } => {
                self.xadd(c, room, *worker, to, json).await?;
            }
            Write::Closed { room, worker, last } => {
                let json = serde_json::to_string(&Entry::Gone).unwrap_or_default();
                self.xadd(c, room, *worker, &None, &json).await?;
                let member = format!("{}/{}", self.node, worker);
                let _: () = redis::cmd("ZREM")
                    .arg(copies_key(room))
                    .arg(member)
                    .query_async(c)
                    .await?;
                copies.remove(&(room.clone(), *worker));
                if *last {
                    self.reading
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(room);
                }
            }
        }
        Ok(())
    }

    /// Every heartbeat: this node's copies stay listed, the streams stay alive.
    async fn refresh(
        &self,
        c: &mut redis::aio::MultiplexedConnection,
        copies: &BTreeSet<(String, u8)>,
    ) -> redis::RedisResult<()> {
        if copies.is_empty() {
            return Ok(());
        }
        let until = unix_ms() + self.ttl.as_millis() as u64;
        let mut p = redis::pipe();
        for (room, worker) in copies {
            let key = copies_key(room);
            p.cmd("ZADD")
                .arg(&key)
                .arg(until)
                .arg(format!("{}/{}", self.node, worker))
                .ignore();
            p.cmd("PEXPIRE")
                .arg(&key)
                .arg(self.ttl.as_millis() as u64 * 4)
                .ignore();
            p.cmd("EXPIRE").arg(stream_key(room)).arg(3_600).ignore();
        }
        p.query_async::<()>(c).await
    }
}

/// One fact read from a room's stream.
#[derive(Debug)]
pub(super) struct ReadEntry {
    pub(super) room: String,
    pub(super) node: String,
    pub(super) relay: Option<SocketAddr>,
    pub(super) worker: u8,
    pub(super) to: Option<(String, u8)>,
    pub(super) entry: Entry,
}

/// Reads the streams of the rooms with copies here (one connection of its own: `XREAD
/// BLOCK` holds it).
pub(super) struct Reader {
    pub(super) node: String,
    pub(super) client: redis::Client,
    pub(super) reading: Reading,
    pub(super) shared: Arc<Shared>,
}

impl Reader {
    pub(super) async fn run(self, tx: mpsc::Sender<ReadEntry>) {
        let mut conn: Option<redis::aio::MultiplexedConnection> = None;
        loop {
            let rooms: Vec<(String, String)> = self
                .reading
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(r, id)| (r.clone(), id.clone()))
                .collect();
            if rooms.is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            if conn.is_none() {
                let cfg = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(Duration::from_millis(500)))
                    .set_response_timeout(Some(Duration::from_secs(2)));
                conn = self
                    .client
                    .get_multiplexed_async_connection_with_config(&cfg)
                    .await
                    .ok();
            }
            let Some(c) = conn.as_mut() else {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            };
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT")
                .arg(512)
                .arg("BLOCK")
                .arg(100)
                .arg("STREAMS");
            for (room, _) in &rooms {
                cmd.arg(stream_key(room));
            }
            for (_, id) in &rooms {
                cmd.arg(id);
            }
            let reply: redis::RedisResult<Option<redis::streams::StreamReadReply>> =
                cmd.query_async(c).await;
            let reply = match reply {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "cascade: XREAD failed");
                    conn = None;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            for key in reply.keys {
                let Some(room) = key
                    .key
                    .strip_prefix(PREFIX)
                    .and_then(|k| k.strip_suffix(":facts"))
                    .map(str::to_string)
                else {
                    continue;
                };
                let mut last = None;
                for e in key.ids {
                    last = Some(e.id.clone());
                    let Some(entry) = self.parse(&room, &e) else {
                        continue;
                    };
                    self.shared
                        .counters
                        .facts_read
                        .fetch_add(1, Ordering::Relaxed);
                    if tx.send(entry).await.is_err() {
                        return;
                    }
                }
                if let Some(id) = last {
                    let mut r = self.reading.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(at) = r.get_mut(&room) {
                        *at = id;
                    }
                }
            }
        }
    }

    fn parse(&self, room: &str, e: &redis::streams::StreamId) -> Option<ReadEntry> {
        let node: String = e.get("n")?;
        if node == self.node {
            return None;
        }
        let to: String = e.get("t").unwrap_or_default();
        let to = match to.split_once('/') {
            Some((n, w)) => {
                if n != self.node {
                    return None;
                }
                Some((n.to_string(), w.parse().ok()?))
            }
            None => None,
        };
        let json: String = e.get("f")?;
        let entry = match serde_json::from_str(&json) {
            Ok(x) => x,
            Err(err) => {
                tracing::warn!(room, %node, error = %err, "cascade: a fact from another node cannot be read (another version?)");
                return None;
            }
        };
        Some(ReadEntry {
            room: room.to_string(),
            relay: e.get::<String>("a").and_then(|a| a.parse().ok()),
            worker: e.get("w")?,
            node,
            to,
            entry,
        })
    }
}
