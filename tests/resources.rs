//! Resources are released: after 50 join/leave cycles the server's peer connections,
//! participants, rooms and tasks, and the process's UDP sockets, are back at baseline.

mod common;

use common::*;
use confab_load::client::{Event, MediaPlan, Publish};
use std::collections::HashSet;

/// UDP sockets open in this process: socket inodes among our fds that /proc/net/udp* list.
fn udp_sockets() -> usize {
    let mut udp_inodes = HashSet::new();
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            for line in text.lines().skip(1) {
                if let Some(inode) = line.split_whitespace().nth(9) {
                    udp_inodes.insert(inode.to_string());
                }
            }
        }
    }
    std::fs::read_dir("/proc/self/fd")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|l| {
                    let s = l.to_string_lossy().to_string();
                    s.strip_prefix("socket:[")?
                        .strip_suffix(']')
                        .map(str::to_string)
                })
                .filter(|inode| udp_inodes.contains(inode))
                .count()
        })
        .unwrap_or(0)
}

fn tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_join_leave_cycles_return_to_baseline() {
    let server = start().await;
    // A resident participant keeps the room alive and sees everyone come and go.
    let mut host = join(&server, "churn", "host", Publish::NONE).await;
    host.wait_for(WAIT, "chat open", |e| {
        matches!(e, Event::ChatOpen).then_some(())
    })
    .await
    .unwrap();
    let base_stats = server.sfu.stats();
    let base_udp = udp_sockets();
    let base_tasks = tasks();
    assert!(
        base_udp >= 2,
        "the media socket and the host's are counted: {base_udp}"
    );

    for round in 0..10 {
        // Five at a time: join, publish, media flows to the host, leave.
        let mut guests = Vec::new();
        for i in 0..5 {
            guests.push(
                join(
                    &server,
                    "churn",
                    &format!("guest-{round}-{i}"),
                    Publish::AUDIO_VIDEO,
                )
                .await,
            );
        }
        let pumps: Vec<_> = guests
            .iter()
            .map(|g| g.start_media(MediaPlan::default()))
            .collect();
        wait_tracks(&mut host, 10).await;
        drop(pumps);
        for g in guests {
            g.leave().await;
        }
        wait_until(|| server.sfu.stats().participants == 1).await;
        host.clear_backlog();
    }

    wait_until(|| {
        let s = server.sfu.stats();
        s.participants == base_stats.participants
            && s.peer_connections == base_stats.peer_connections
            && s.rooms == base_stats.rooms
            && s.published_tracks == 0
            && s.down_tracks == 0
    })
    .await;
    // Client and server sockets and tasks are released too (the clients close theirs
    // asynchronously, so wait for the count rather than read it once).
    wait_until(|| udp_sockets() <= base_udp).await;
    wait_until(|| tasks() <= base_tasks).await;
    assert_eq!(udp_sockets(), base_udp);
    server.stop().await;
}
