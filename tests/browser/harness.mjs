// What the browser tests share: the gateway binary started and stopped, headless Chromium, and a TCP relay the
// test controls, so that a test can cut a page's connections the way a network does (both sockets destroyed,
// no close handshake). Not a test file itself (node --test runs only *.test.mjs here).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import net from 'node:net';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const BIN = process.env.WSGATE_BIN;
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
// Without the background-networking flags Chromium tries to reach Google's hosts, which this machine refuses.
const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

/** Starts the gateway; resolves with its process and ws:// (or wss://) URL once it prints its listening line. */
export function startGateway(args) {
  assert.ok(BIN, 'set WSGATE_BIN to the wsgate binary');
  const listen = args.includes('--listen') ? [] : ['--listen', '127.0.0.1:0'];
  const proc = spawn(BIN, [...listen, '--threads', '2', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  proc.stderr.on('data', (d) => { stderr += d; });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no listening line; stderr:\n${stderr}`)), 10_000);
    proc.on('exit', (code) => reject(new Error(`wsgate exited early (${code}); stderr:\n${stderr}`)));
    createInterface({ input: proc.stdout }).on('line', (line) => {
      const m = line.match(/^wsgate: listening on (wss?:\/\/\S+\/ws) \(io: \w+\)$/);
      if (m) {
        clearTimeout(timer);
        resolve({ proc, url: m[1], port: Number(new URL(m[1]).port), stderr: () => stderr });
      }
    });
  });
}

export function exited(proc) {
  return new Promise((resolve) => {
    if (proc.exitCode !== null) resolve(proc.exitCode);
    else proc.on('exit', (code) => resolve(code));
  });
}

/** SIGTERM, then the exit code once it has exited. */
export async function stopGateway(gw) {
  gw.proc.kill('SIGTERM');
  return exited(gw.proc);
}

/** Runs `fn(page)` in a fresh headless Chromium; `extraArgs` are more command-line flags for it. */
export async function withBrowser(fn, extraArgs = []) {
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: [...CHROMIUM_ARGS, ...extraArgs] });
  try {
    const page = await browser.newPage();
    return await fn(page);
  } finally {
    await browser.close();
  }
}

/**
 * A TCP relay on 127.0.0.1 to the gateway on `targetPort`: every accepted connection is piped to a new
 * connection to the target. `cut()` destroys every relayed pair (both sockets) and returns how many it cut;
 * `refuse(ms)` destroys new connections at once for that long (a network that stays down); `retarget(port)`
 * sends later connections to another gateway (one restarted on another port).
 */
export async function startRelay(targetPort) {
  let target = targetPort;
  let refuseUntil = 0;
  const pairs = new Set();
  const server = net.createServer((client) => {
    if (Date.now() < refuseUntil) {
      client.destroy();
      return;
    }
    const upstream = net.connect(target, '127.0.0.1');
    const pair = { client, upstream };
    pairs.add(pair);
    const drop = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    for (const s of [client, upstream]) {
      s.on('error', drop);
      s.on('close', drop);
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: server.address().port,
    retarget(port) { target = port; },
    refuse(ms) { refuseUntil = Date.now() + ms; },
    cut() {
      const n = pairs.size;
      for (const { client, upstream } of [...pairs]) {
        client.destroy();
        upstream.destroy();
      }
      pairs.clear();
      return n;
    },
    close() {
      this.cut();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}
