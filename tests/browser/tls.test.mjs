// The gateway over TLS (--tls-cert, --tls-key) in headless Chromium: the live page loaded over https:// connects
// back with wss:// (and, on the SSE transport, an https EventSource), and a page's own WebSocket to wss:// gets
// the demo feed. The certificate is made here with openssl for `localhost`; Chromium trusts exactly that key
// (--ignore-certificate-errors-spki-list: the test CA of this run, nothing else). Needs WSGATE_BIN and CHROMIUM
// like websocket.test.mjs, and openssl (scripts/install-test-deps.sh).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { startGateway, stopGateway, withBrowser } from './harness.mjs';

/** A self-signed ECDSA P-256 certificate for localhost; its SPKI hash as Chromium's flag wants it. */
function makeCertificate(dir) {
  const cert = join(dir, 'cert.pem');
  const key = join(dir, 'key.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-days', '2', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost', '-keyout', key, '-out', cert],
  { stdio: 'ignore' });
  const spki = execFileSync('sh', ['-c',
    `openssl x509 -pubkey -noout -in '${cert}' | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64`]);
  return { cert, key, spki: spki.toString().trim() };
}

async function withTlsGateway(fn) {
  const dir = mkdtempSync(join(process.env.TMPDIR ?? '/tmp', 'wsgate-browser-tls-'));
  const { cert, key, spki } = makeCertificate(dir);
  const gw = await startGateway(['--tls-cert', cert, '--tls-key', key, '--demo', '--demo-rate', '50']);
  try {
    assert.match(gw.url, /^wss:\/\//, 'the listening line says wss://');
    await withBrowser((page) => fn(page, gw), [`--ignore-certificate-errors-spki-list=${spki}`]);
  } finally {
    await stopGateway(gw);
    rmSync(dir, { recursive: true, force: true });
  }
}

test('over https the live page streams through wss:// and through an https event stream', async () => {
  await withTlsGateway(async (page, gw) => {
    await page.goto(`https://localhost:${gw.port}/`);
    for (const transport of ['ws', 'sse']) {
      if (transport === 'sse') await page.selectOption('#transport', 'sse');
      await page.waitForFunction((t) => {
        const s = window.wsgateState;
        return s.connected && s.transport === t && Object.values(s.topics).some((x) => x.count >= 3);
      }, transport, { timeout: 20_000 });
      const s = await page.evaluate(() => JSON.parse(JSON.stringify(window.wsgateState)));
      assert.deepEqual(s.errors, [], `${transport}: no error reply`);
      for (const [topic, t] of Object.entries(s.topics)) assert.equal(t.holes, 0, `${transport}: ${topic}: holes`);
    }
  });
});

test('a page opens its own wss:// WebSocket and receives the feed', async () => {
  await withTlsGateway(async (page, gw) => {
    await page.goto(`https://localhost:${gw.port}/healthz`);
    const ticks = await page.evaluate((url) => new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      const got = [];
      setTimeout(() => reject(new Error(`timeout with ${got.length} messages`)), 10_000);
      ws.onmessage = (e) => { got.push(JSON.parse(e.data)); if (got.length === 3) { ws.close(1000); resolve(got); } };
      ws.onerror = () => reject(new Error('WebSocket error event'));
    }), `wss://localhost:${gw.port}/ws`);
    assert.equal(ticks.length, 3);
    for (const t of ticks) assert.equal(t.type, 'tick');
  });
});
