// wsgate driven by a real browser: headless Chromium (through playwright-core) uses the standard JavaScript
// WebSocket API against the real gateway binary. Needs WSGATE_BIN (the gateway binary) and CHROMIUM (default
// /usr/bin/chromium); scripts/test.sh sets both up.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { exited, startGateway, withBrowser } from './harness.mjs';

test('a browser receives the demo feed, negotiates a subprotocol, gets its echo and closes cleanly', async () => {
  const gw = await startGateway(['--demo', '--demo-rate', '50', '--echo', '--subprotocol', 'chat']);
  try {
    const result = await withBrowser((page) => page.evaluate((url) => new Promise((resolve, reject) => {
      const ws = new WebSocket(url, ['superchat', 'chat']);
      ws.binaryType = 'arraybuffer';
      const ticks = [];
      let echoedText = false;
      let echoedBinary = null;
      setTimeout(() => reject(new Error(`timeout: ${ticks.length} ticks, echoedText=${echoedText}`)), 10_000);
      ws.onmessage = (e) => {
        if (e.data instanceof ArrayBuffer) {
          echoedBinary = Array.from(new Uint8Array(e.data));
          ws.close(1000, 'done');
        } else if (e.data === 'hello from the browser ✓') {
          echoedText = true;
          ws.send(new Uint8Array([0, 1, 2, 253, 254, 255]));
        } else if (ticks.length < 3) {
          ticks.push(JSON.parse(e.data));
          if (ticks.length === 3) ws.send('hello from the browser ✓');
        }
      };
      ws.onclose = (e) => resolve({ ticks, echoedText, echoedBinary, protocol: ws.protocol, code: e.code,
        wasClean: e.wasClean });
      ws.onerror = () => reject(new Error('WebSocket error event'));
    }), gw.url));
    assert.equal(result.protocol, 'chat', 'the first offered subprotocol the server speaks');
    assert.equal(result.ticks.length, 3);
    for (const t of result.ticks) {
      assert.equal(t.type, 'tick');
      assert.equal(typeof t.symbol, 'string');
      assert.ok(t.bid <= t.ask, `bid ${t.bid} <= ask ${t.ask}`);
    }
    assert.ok(result.echoedText, 'text echoed (UTF-8 intact)');
    assert.deepEqual(result.echoedBinary, [0, 1, 2, 253, 254, 255], 'binary echoed');
    assert.equal(result.code, 1000);
    assert.ok(result.wasClean, 'closing handshake completed');
  } finally {
    gw.proc.kill('SIGTERM');
    await exited(gw.proc);
  }
});

test('a browser sees close 1001 when the gateway shuts down', async () => {
  const gw = await startGateway(['--demo', '--demo-rate', '20']);
  const result = await withBrowser(async (page) => {
    const closed = page.evaluate((url) => new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      setTimeout(() => reject(new Error('no close within 10 s')), 10_000);
      ws.onmessage = () => { window.gotMessage = true; };
      ws.onclose = (e) => resolve({ code: e.code, reason: e.reason, wasClean: e.wasClean });
    }), gw.url);
    await page.waitForFunction(() => window.gotMessage === true, null, { timeout: 10_000 });
    gw.proc.kill('SIGTERM');
    return closed;
  });
  assert.equal(result.code, 1001, JSON.stringify(result));
  assert.ok(result.wasClean, 'closing handshake completed');
  assert.equal(await exited(gw.proc), 0, 'gateway exits 0 after SIGTERM');
});

test('a browser asking for wsgate.v1.json gets envelopes with positions', async () => {
  const gw = await startGateway(['--demo', '--demo-rate', '50']);
  try {
    const result = await withBrowser((page) => page.evaluate((url) => new Promise((resolve, reject) => {
      const ws = new WebSocket(url, ['wsgate.v1.json']);
      const got = [];
      setTimeout(() => reject(new Error(`timeout: ${got.length} envelopes`)), 10_000);
      ws.onmessage = (e) => {
        got.push(JSON.parse(e.data));
        if (got.length === 8) { ws.close(1000); resolve({ protocol: ws.protocol, got }); }
      };
    }), gw.url));
    assert.equal(result.protocol, 'wsgate.v1.json');
    const lastByTopic = new Map();
    let lastSeq = 0;
    for (const m of result.got) {
      assert.equal(m.topic, m.data.symbol, 'the demo routes each tick by its symbol');
      assert.ok(m.seq > lastSeq, 'one sequence over the feed');
      assert.equal(m.prev, lastByTopic.get(m.topic) ?? m.prev, 'prev is the topic\'s previous seq');
      lastByTopic.set(m.topic, m.seq);
      lastSeq = m.seq;
      assert.ok(Number.isSafeInteger(m.epoch) && m.epoch > 0);
    }
  } finally {
    gw.proc.kill('SIGTERM');
    await exited(gw.proc);
  }
});

test('EventSource receives the feed, and after a gateway restart reconnects and is told of the gap', async () => {
  const cfg = `${process.env.TMPDIR ?? '/tmp'}/wsgate-sse-${process.pid}.toml`;
  const { writeFileSync } = await import('node:fs');
  writeFileSync(cfg, 'sse_retry = 300\n');
  let gw = await startGateway(['--config', cfg, '--demo', '--demo-rate', '50']);
  const base = gw.url.replace('ws://', 'http://').replace(/\/ws$/, '');
  try {
    await withBrowser(async (page) => {
      await page.goto(`${base}/healthz`);
      await page.evaluate(() => {
        window.events = [];
        window.gaps = [];
        const es = new EventSource('/sse');
        es.onmessage = (e) => window.events.push({ id: e.lastEventId, data: JSON.parse(e.data) });
        es.addEventListener('gap', (e) => window.gaps.push(JSON.parse(e.data)));
      });
      await page.waitForFunction(() => window.events.length >= 3, null, { timeout: 10_000 });
      const first = await page.evaluate(() => window.events.slice(0, 3));
      for (const e of first) {
        assert.match(e.id, /^\d+:\d+$/);
        assert.equal(e.id, `${e.data.epoch}:${e.data.seq}`, 'the event id is the position');
      }
      // Restart the gateway on the same port: a new process, a new epoch.
      gw.proc.kill('SIGTERM');
      await exited(gw.proc);
      gw = await startGateway(['--config', cfg, '--demo', '--demo-rate', '50', '--listen', new URL(base).host]);
      await page.waitForFunction(() => window.gaps.length >= 1, null, { timeout: 15_000 });
      const gap = await page.evaluate(() => window.gaps[0]);
      assert.equal(gap.wsgate, 'gap');
      assert.equal(gap.reason, 'epoch', 'positions from before the restart are foreign');
      assert.equal(gap.from.epoch, first[0].data.epoch);
      assert.notEqual(gap.to.epoch, gap.from.epoch);
      await page.waitForFunction((n) => window.events.length > n, (await page.evaluate(() => window.events.length)),
        { timeout: 10_000 });
    });
  } finally {
    gw.proc.kill('SIGTERM');
    await exited(gw.proc);
  }
});
