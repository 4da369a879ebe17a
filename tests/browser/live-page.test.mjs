// The live page (GET /) in headless Chromium, for each transport: the page is loaded from, and connects
// through, a TCP relay the test controls (harness.mjs). The test picks symbols on the page, cuts every relayed
// connection twice while the feed runs (and keeps the network down a little while, so the page can only catch
// up through the gateway's history), and checks that the page saw every message of its symbols exactly once:
// no hole by `prev`, no gap notice, no message twice, and the demo's own per-symbol tick numbers without a
// missing one. Then it restarts the gateway (a new process: a new epoch) and checks the page shows the gap.
// Needs WSGATE_BIN and CHROMIUM like websocket.test.mjs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { startGateway, startRelay, stopGateway, withBrowser } from './harness.mjs';

const TMP = process.env.TMPDIR ?? '/tmp';
const FIRST = ['BTC-USD', 'ETH-USD', 'SOL-USD']; // what the page subscribes to when it opens
const CHOSEN = ['AAPL', 'BTC-USD', 'ETH-USD']; // after the test unticks SOL-USD and ticks AAPL
const CUTS = 2;

const snapshot = (page) => page.evaluate(() => JSON.parse(JSON.stringify(window.wsgateState)));
const countsOf = (s) => Object.fromEntries(Object.entries(s.topics).map(([topic, t]) => [topic, t.count]));

/** Waits until the page is connected and each topic in `counts` has `more` messages beyond its count there. */
function moreMessages(page, counts, more) {
  return page.waitForFunction(([counts, more]) => {
    const s = window.wsgateState;
    return s.connected && Object.entries(counts).every(([topic, n]) => s.topics[topic]?.count >= n + more);
  }, [counts, more], { timeout: 20_000 });
}

/** Every message of the chosen symbols seen once since the page subscribed. */
function assertExactlyOnce(s, label) {
  assert.deepEqual(Object.keys(s.topics).sort(), CHOSEN, `${label}: a row per chosen symbol`);
  assert.deepEqual(s.unexpected, {}, `${label}: no message of a symbol not chosen`);
  assert.deepEqual(s.errors, [], `${label}: no error reply`);
  for (const [topic, t] of Object.entries(s.topics)) {
    assert.equal(t.holes, 0, `${label}: ${topic}: holes by prev`);
    assert.deepEqual(t.gaps, [], `${label}: ${topic}: gap notices`);
    assert.equal(t.dups, 0, `${label}: ${topic}: messages delivered twice`);
    // The demo numbers each symbol's ticks 1, 2, 3, … (independent of the gateway's positions).
    assert.equal(t.count, t.data.seq - t.first.seq + 1,
      `${label}: ${topic}: ${t.count} messages for ticks ${t.first.seq}..${t.data.seq}`);
  }
}

async function cutAndResume(transport) {
  const cfg = `${TMP}/wsgate-live-page-${process.pid}-${transport}.toml`;
  writeFileSync(cfg, 'sse_retry = 300\n'); // EventSource reconnects after 300 ms instead of 3 s
  const args = ['--config', cfg, '--demo', '--demo-rate', '60'];
  let gw = await startGateway(args);
  const relay = await startRelay(gw.port);
  try {
    await withBrowser(async (page) => {
      await page.goto(`http://127.0.0.1:${relay.port}/`);
      if (transport === 'sse') await page.selectOption('#transport', 'sse');
      await moreMessages(page, Object.fromEntries(FIRST.map((t) => [t, 0])), 3);
      assert.equal((await snapshot(page)).transport, transport);

      // Change the selection on the open connection (WebSocket: unsubscribe and subscribe messages;
      // SSE: the stream reopened from the kept symbols' positions).
      await page.uncheck('#symbols input[value="SOL-USD"]');
      await page.check('#symbols input[value="AAPL"]');
      await moreMessages(page, Object.fromEntries(CHOSEN.map((t) => [t, 0])), 3);
      let s = await snapshot(page);
      assertExactlyOnce(s, 'after the selection change');
      assert.equal(s.reconnects, 0);

      for (let i = 1; i <= CUTS; i++) {
        const before = countsOf(await snapshot(page));
        relay.refuse(800); // down for 0.8 s: about 24 messages of the chosen symbols come meanwhile
        assert.ok(relay.cut() >= 1, 'the page was connected through the relay');
        await page.waitForFunction((n) => window.wsgateState.reconnects >= n, i, { timeout: 20_000 });
        await moreMessages(page, before, 30);
      }
      s = await snapshot(page);
      assertExactlyOnce(s, `after ${CUTS} cuts`);
      assert.equal(s.reconnects, CUTS, 'one reconnect per cut');
      assert.equal(await page.textContent('#reconnects'), String(CUTS));
      const oldEpoch = s.position.epoch;

      // A new gateway process (a new epoch) behind the relay: the page must say that it may have missed some.
      assert.equal(await stopGateway(gw), 0);
      gw = await startGateway(args);
      relay.retarget(gw.port);
      await page.waitForFunction((chosen) => chosen.every((topic) => {
        const t = window.wsgateState.topics[topic];
        return t.gaps.length > 0 && t.epoch !== window.wsgateState.topics[topic].gaps[0].from.epoch;
      }), CHOSEN, { timeout: 20_000 });
      s = await snapshot(page);
      for (const [topic, t] of Object.entries(s.topics)) {
        assert.equal(t.gaps.length, 1, `${topic}: one gap notice: ${JSON.stringify(t.gaps)}`);
        const [gap] = t.gaps;
        assert.equal(gap.reason, 'epoch', `${topic}: positions from before the restart are foreign`);
        assert.equal(gap.from.epoch, oldEpoch);
        assert.notEqual(gap.to.epoch, oldEpoch);
        assert.equal(t.epoch, gap.to.epoch, `${topic}: messages of the new process follow`);
        assert.equal(t.holes, 0, `${topic}: the notice said it; no hole by prev`);
      }
      assert.deepEqual(s.unexpected, {});
      if (transport === 'ws') {
        // The `closing` notice before the 1001 close is a notice, not a message: it set the reconnect delay.
        assert.match(await page.textContent('#log'), /gateway closing \(1001, server shutting down\): reconnecting in \d+ ms/);
      }
      assert.match(await page.textContent('#rows tr[data-topic="BTC-USD"] td:last-child'), /^1 \(last: epoch, /);
      assert.match(await page.textContent('#gaps'), /BTC-USD: epoch — messages after \d+:\d+ and before \d+:\d+/);
      await page.screenshot({ path: `${TMP}/wsgate-live-page-${transport}.png` });
    });
  } finally {
    await relay.close();
    await stopGateway(gw);
  }
}

test('the live page over WebSocket resumes through history after its connections are cut, then shows the restart gap',
  () => cutAndResume('ws'));

test('the live page over SSE resumes through history after its connections are cut, then shows the restart gap',
  () => cutAndResume('sse'));
