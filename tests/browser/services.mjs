// Real servers the browser tests (and benches/paths.mjs) start on free loopback ports:
// redis-server (cascade) and coturn (TURN, `use-auth-secret`). Each returns a `stop`.

import dgram from 'node:dgram';
import net from 'node:net';
import { spawn } from 'node:child_process';
import { once } from 'node:events';

/** A loopback port free on both UDP and TCP (coturn listens on both). */
export async function freePort() {
  for (;;) {
    const sock = dgram.createSocket('udp4');
    await new Promise((resolve) => sock.bind(0, '127.0.0.1', resolve));
    const { port } = sock.address();
    sock.close();
    const tcpFree = await new Promise((resolve) => {
      const srv = net.createServer();
      srv.once('error', () => resolve(false));
      srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
    });
    if (tcpFree) return port;
  }
}

/** Waits (up to 10 s, polling) until `port` accepts TCP; `failed()` explains an early end. */
async function waitListening(port, what, failed) {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const up = await new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => { s.end(); resolve(true); });
      s.once('error', () => resolve(false));
    });
    if (up) return;
    const why = failed();
    if (why || Date.now() > deadline) {
      throw new Error(`${what} did not start (scripts/test.sh installs it)${why ? `: ${why}` : ''}`);
    }
    await new Promise((r) => setTimeout(r, 50)); // polling interval
  }
}

function stopper(proc) {
  return async () => {
    if (proc.exitCode === null) {
      proc.kill('SIGKILL');
      await once(proc, 'exit');
    }
  };
}

/** redis-server without persistence. */
export async function startRedis() {
  const port = await freePort();
  const proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
    stdio: 'ignore',
  });
  await waitListening(port, 'redis-server', () => (proc.exitCode !== null ? `exit ${proc.exitCode}` : ''));
  return { url: `redis://127.0.0.1:${port}`, stop: stopper(proc) };
}

/**
 * coturn on loopback with the TURN REST API secret, relaying to loopback peers. `url` is
 * its UDP TURN URL; `log()` what it printed.
 */
export async function startCoturn(secret) {
  const port = await freePort();
  const relayBase = 40000 + Math.floor(Math.random() * 20000);
  const proc = spawn('turnserver', [
    '-n', '--listening-ip=127.0.0.1', `--listening-port=${port}`, '--relay-ip=127.0.0.1',
    `--min-port=${relayBase}`, `--max-port=${relayBase + 500}`,
    '--use-auth-secret', `--static-auth-secret=${secret}`, '--realm=confab.test',
    '--allow-loopback-peers', '--no-tls', '--no-dtls', '--no-cli', '--fingerprint',
    '--log-file=stdout', '--simple-log',
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  proc.stdout.on('data', (c) => { log += c.toString(); });
  proc.stderr.on('data', (c) => { log += c.toString(); });
  await waitListening(port, 'turnserver', () => (proc.exitCode !== null ? log : ''));
  return {
    port,
    url: `turn:127.0.0.1:${port}?transport=udp`,
    log: () => log,
    stop: stopper(proc),
  };
}
