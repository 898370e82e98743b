// Drives the OHIF viewer bundled with MONAI Label, with its stock MONAI Label panel, in
// Debian's headless Chromium (playwright-core, no downloaded browser).
//
// Protocol: one JSON command per line on stdin, one JSON answer per line on stdout
// ({"ok": true, ...} or {"ok": false, "error": "..."}); tests/ohif_browser.py is the client.
//   open {url, server}            load the viewer, hide the banner, connect the panel to `server`
//   model {name}                  open the "Point Prompts" tab and pick the model
//   label {name}                  pick a row of the panel's label table ("background" or a label)
//   click {world}                 show the axial slice through `world` (patient mm) and click there
//   run {}                        press the tab's Run; wait for the /infer/ answer (returned as
//                                 base64 NRRD) and the repaint
//   segment {}                    the viewer's labelmap: voxel counts per segment + base64 uint8 data
//   save {label_info}             PUT the labelmap of the shown series to /datastore/label (the form
//                                 of the panel client's save_label; the README's console snippet)
//   reload {}                     reload the page (e.g. to see a stored SEG in the study)
//   screenshot {path}             PNG of the page
//   quit {}
import { chromium } from 'playwright-core';
import readline from 'node:readline';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const STEP_TIMEOUT_MS = Number(process.env.OHIF_STEP_TIMEOUT_MS || 120000);
const FLAGS = [
  '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--use-gl=angle', '--use-angle=swiftshader',
];

let context = null;
let page = null;
let server = null;
const consoleErrors = [];

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

async function axialViewport() {
  // the viewport whose view plane normal is the slice axis (z) of the patient frame
  return page.evaluate(() => {
    for (const engine of window.cornerstone.getRenderingEngines()) {
      for (const vp of engine.getViewports()) {
        const n = vp.getCamera().viewPlaneNormal;
        if (Math.abs(n[2]) > 0.99) return vp.id;
      }
    }
    return null;
  });
}

const commands = {
  async open({ url, server: serverUrl, userDataDir }) {
    server = serverUrl.replace(/\/$/, '');
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: FLAGS,
      viewport: { width: 2200, height: 1100 },
    });
    page = context.pages()[0] || (await context.newPage());
    page.setDefaultTimeout(STEP_TIMEOUT_MS);
    page.on('console', (m) => {
      if (m.type() === 'error' && !m.text().includes('ERR_NAME_NOT_RESOLVED')) consoleErrors.push(m.text().slice(0, 300));
    });
    await page.goto(url);
    await page.getByText('Confirm and Hide').click();
    await page.waitForFunction(() => window.cornerstone && window.cornerstone.getRenderingEngines().length > 0);
    await page.fill('#monailabelServerURL', server + '/');
    const info = page.waitForResponse((r) => r.url().startsWith(server + '/info/'));
    await page.click('table.settingsTable button.actionButton');
    const response = await info;
    if (response.status() !== 200) throw new Error(`GET /info/ answered ${response.status()}`);
    await page.getByText('Point Prompts', { exact: true }).waitFor();
    return { info_status: response.status() };
  },

  async model({ name }) {
    const tab = page.locator('.tab', { has: page.getByText('Point Prompts', { exact: true }) });
    await tab.locator('label.tab-label').click();
    const select = tab.locator('select.selectBox');
    await select.selectOption(name);
    return { selected: await select.inputValue() };
  },

  async label({ name }) {
    const row = page.locator('tr.clickable-row', { has: page.locator('td', { hasText: new RegExp(`^${name}$`) }) });
    await row.first().click();
    return {};
  },

  async click({ world }) {
    const id = await axialViewport();
    if (!id) throw new Error('no axial viewport found');
    const target = await page.evaluate(
      ({ id, world }) => {
        const vp = window.cornerstone.getEnabledElementByViewportId(id).viewport;
        const cam = vp.getCamera();
        const n = cam.viewPlaneNormal;
        const d = (world[0] - cam.focalPoint[0]) * n[0] + (world[1] - cam.focalPoint[1]) * n[1] + (world[2] - cam.focalPoint[2]) * n[2];
        const shift = (p) => p.map((v, i) => v + d * n[i]);
        vp.setCamera({ focalPoint: shift(cam.focalPoint), position: shift(cam.position) });
        vp.render();
        const [x, y] = vp.worldToCanvas(world);
        const rect = vp.canvas.getBoundingClientRect();
        return { x: rect.left + x, y: rect.top + y, inside: x >= 0 && y >= 0 && x < rect.width && y < rect.height };
      },
      { id, world },
    );
    if (!target.inside) throw new Error(`point ${world} is outside the axial viewport`);
    const placed = () =>
      window.cornerstoneTools.annotation.state.getAllAnnotations().filter((a) => a.metadata.toolName === 'ProbeMONAILabel').length;
    const before = await page.evaluate(placed);
    await page.waitForTimeout(300); // let the new slice render before clicking
    await page.mouse.click(target.x, target.y);
    // the tool adds the point asynchronously: wait for it, or fail
    await page.waitForFunction(`(${placed})() > ${before}`, null, { timeout: 15000 });
    return { canvas: [target.x, target.y], points: before + 1 };
  },

  async run() {
    const tab = page.locator('.tab', { has: page.getByText('Point Prompts', { exact: true }) });
    const start = Date.now();
    const answer = page.waitForResponse((r) => r.url().startsWith(server + '/infer/'));
    await tab.locator('button[title="Run PointPrompts"]').click();
    const response = await answer;
    const elapsed = Date.now() - start;
    if (response.status() !== 200) {
      return { status: response.status(), elapsed_ms: elapsed, body: (await response.text()).slice(0, 500) };
    }
    const body = await response.body();
    await page.getByText('Running Inference for Point Prompts - Successful').first().waitFor();
    return { status: 200, elapsed_ms: elapsed, url: response.url(), nrrd: body.toString('base64') };
  },

  async segment() {
    return page.evaluate(() => {
      const seg = window.services.segmentationService;
      const volume = seg.getLabelmapVolume('1');
      if (!volume) throw new Error('no labelmap volume (segmentation 1) in the viewer');
      const data = volume.voxelManager.getCompleteScalarDataArray();
      const counts = {};
      for (const v of data) if (v) counts[v] = (counts[v] || 0) + 1;
      let binary = '';
      for (let i = 0; i < data.length; i += 0x8000) binary += String.fromCharCode.apply(null, data.subarray(i, i + 0x8000));
      const segments = seg.getSegmentation('1').segments;
      const names = Object.fromEntries(Object.values(segments).filter(Boolean).map((s) => [s.segmentIndex, s.label]));
      return { dimensions: volume.dimensions, counts, names, data: btoa(binary) };
    });
  },

  async save({ label_info }) {
    // what the README tells a user to paste into the console
    return page.evaluate(async (label_info) => {
      const volume = window.services.segmentationService.getLabelmapVolume('1');
      const series = window.services.displaySetService.getActiveDisplaySets()[0].SeriesInstanceUID;
      const form = new FormData();
      form.append('params', JSON.stringify({ label_info }));
      form.append('label', new Blob([new Uint8Array(volume.voxelManager.getCompleteScalarDataArray())]), 'label.bin');
      const response = await fetch(`/datastore/label?image=${series}&tag=final`, { method: 'PUT', body: form });
      return { series, status: response.status, body: await response.text() };
    }, label_info);
  },

  async reload() {
    await page.reload();
    await page.waitForFunction(() => window.cornerstone && window.cornerstone.getRenderingEngines().length > 0);
    await page.waitForTimeout(2000);
    return {};
  },

  async screenshot({ path }) {
    await page.screenshot({ path });
    return { path };
  },

  async quit() {
    if (context) await context.close();
    context = null;
    return { console_errors: consoleErrors };
  },
};

const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  const { cmd, ...args } = JSON.parse(line);
  try {
    if (!commands[cmd]) throw new Error(`unknown command ${cmd}`);
    out({ ok: true, ...(await commands[cmd](args)) });
  } catch (e) {
    out({ ok: false, error: String(e && e.stack ? e.stack : e).slice(0, 2000) });
  }
  if (cmd === 'quit') break;
}
if (context) await context.close();
process.exit(0);
