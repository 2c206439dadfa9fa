// What the dashboard's browser tests share: headless Chromium on one page, what it saw (screenshots, page errors,
// accessibility findings), a screenshot that axe-core checks, and the run that prints it all.
// FTSERVE_ARTIFACTS_DIR: where screenshots go (tests/artifacts by default); CHROMIUM: another browser binary
// than /usr/bin/chromium.
import {mkdirSync, readFileSync} from "node:fs";
import {createRequire} from "node:module";
import {join} from "node:path";
import {chromium} from "playwright-core";

export const artifacts = process.env.FTSERVE_ARTIFACTS_DIR ?? new URL("../artifacts", import.meta.url).pathname;
const chromiumPath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

// A page 1200 by 900 px in a fresh browser. Each test names its screenshots `${prefix}-${name}.png`, so that
// two tests writing to the same folder keep both sets.
export async function openPage(prefix, {waitMs, acceptDownloads = false}) {
  mkdirSync(artifacts, {recursive: true});
  const seen = {screenshots: [], pageErrors: [], accessibility: {}};
  const browser = await chromium.launch({executablePath: chromiumPath});
  const context = await browser.newContext({viewport: {width: 1200, height: 900}, acceptDownloads});
  const page = await context.newPage();
  page.setDefaultTimeout(waitMs);
  page.on("pageerror", (error) => seen.pageErrors.push(error.message));
  const pathOf = (name) => join(artifacts, `${prefix}-${name}.png`);

  // The page's screenshot, and axe-core's serious and critical findings on it. The page's CSP refuses
  // injected <script>s and eval, so axe's source is evaluated through the debugging protocol, which it does not govern.
  async function shot(name) {
    const path = pathOf(name);
    await page.screenshot({path, fullPage: true});
    seen.screenshots.push(path);
    if (!await page.evaluate(() => Boolean(window.axe))) await page.evaluate(axeSource);
    seen.accessibility[name] = await page.evaluate(async () => {
      const result = await window.axe.run(document, {resultTypes: ["violations"]});
      return result.violations.filter((v) => ["serious", "critical"].includes(v.impact))
        .map((v) => `${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(" ")).join("; ")})`);
    });
  }

  // Runs the test's steps; a step that fails ends the run with its reason on stderr, exit status 1 and a
  // screenshot of where it stopped. What was seen is printed as one JSON line, whatever happened.
  async function run(steps) {
    try {
      await steps();
    } catch (error) {
      await page.screenshot({path: pathOf("failure"), fullPage: true}).catch(() => {});
      console.error(error.message);
      process.exitCode = 1;
    } finally {
      await browser.close();
      console.log(JSON.stringify(seen));
    }
  }

  return {page, seen, shot, run};
}
