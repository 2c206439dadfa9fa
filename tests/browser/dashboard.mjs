// Drives ftserve's dashboard in headless Chromium as a person would, for tests/integration/test_dashboard.py.
// usage: FTSERVE_API_KEY=sk-... node dashboard.mjs SERVER_URL JOB_ID FILE_ID REWARDED_JOB_ID
// The job must be running (the rewarded one finished, with reward metrics) on a server that asks for FTSERVE_API_KEY. Prints one JSON object of what it saw;
// a step that never happens fails with its reason on stderr (exit 1). Screenshots go to FTSERVE_ARTIFACTS_DIR;
// CHROMIUM names another browser binary than /usr/bin/chromium.
import {mkdirSync} from "node:fs";
import {join} from "node:path";
import {chromium} from "playwright-core";

const [server, jobId, fileId, rewardedJobId] = process.argv.slice(2);
const key = process.env.FTSERVE_API_KEY;
const artifacts = process.env.FTSERVE_ARTIFACTS_DIR ?? new URL("../artifacts", import.meta.url).pathname;
const chromiumPath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const WAIT_MS = 10_000;
mkdirSync(artifacts, {recursive: true});

const seen = {screenshots: [], pageErrors: []};
const browser = await chromium.launch({executablePath: chromiumPath});
const page = await browser.newPage({viewport: {width: 1200, height: 900}});
page.setDefaultTimeout(WAIT_MS);
page.on("pageerror", (error) => seen.pageErrors.push(error.message));

async function shot(name) {
  const path = join(artifacts, `dashboard-${name}.png`);
  await page.screenshot({path, fullPage: true});
  seen.screenshots.push(path);
}

const points = () => page.locator(".chart svg").getAttribute("data-points").then(Number);
const status = () => page.locator(".title .status").textContent();

try {
  // The server wants a key: the prompt comes up, a wrong key is refused with the server's message.
  await page.goto(`${server}/dashboard`);
  seen.landedOn = page.url();
  const keyField = page.getByLabel("API key");
  await keyField.waitFor();
  await shot("sign-in");
  await keyField.fill("sk-not-a-key");
  await page.getByRole("button", {name: "Sign in"}).click();
  await page.waitForFunction(() => document.querySelector(".sign-in [role=alert]")?.textContent.trim());
  seen.wrongKeyMessage = (await page.locator(".sign-in [role=alert]").textContent()).trim();
  await keyField.fill(key);
  await page.getByRole("button", {name: "Sign in"}).click();

  // The jobs list shows the job; a status filter it does not match hides it.
  const row = page.locator(`tr[data-job="${jobId}"]`);
  await row.waitFor();
  seen.listedStatus = (await row.locator(".status").textContent()).trim();
  await page.getByRole("button", {name: "succeeded"}).click();
  await row.waitFor({state: "detached"});
  seen.hiddenBySucceededFilter = true;
  await page.getByRole("button", {name: "all"}).click();
  await row.waitFor();
  await shot("jobs");

  // Its page: the chart grows while the job runs; the evaluation is shown.
  await row.getByRole("link", {name: jobId}).click();
  seen.jobUrl = page.url();
  await page.waitForFunction(() => Number(document.querySelector(".chart svg")?.getAttribute("data-points")) > 0);
  const first = await points();
  await page.waitForFunction((before) => Number(document.querySelector(".chart svg").getAttribute("data-points")) > before, first);
  seen.chartPoints = [first, await points()];
  seen.validLine = await page.locator(".chart polyline.valid").count() === 1;
  seen.rewardChartHidden = await page.locator("#reward-title").isHidden();
  await page.locator("#evaluation-title").waitFor();
  seen.evaluation = await page.locator("section:has(#evaluation-title) tbody tr")
    .evaluateAll((rows) => rows.map((row) => [...row.cells].map((cell) => cell.textContent.trim())));
  seen.runningStatus = (await status()).trim();
  seen.enabledWhileRunning = await page.locator(".actions button:enabled").allTextContents();
  await shot("job-running");

  // Cancel: the status becomes cancelled and the buttons go off.
  await page.getByRole("button", {name: "Cancel"}).click();
  await page.waitForFunction(() => document.querySelector(".title .status")?.textContent === "cancelled");
  await page.getByText("Fine-tuning job cancelled").waitFor();
  seen.finalStatus = (await status()).trim();
  seen.enabledWhenCancelled = await page.locator(".actions button:enabled").allTextContents();
  await shot("job-cancelled");

  // The link the CLI prints opens the job directly.
  await page.goto(`${server}/dashboard/#/jobs/${jobId}`);
  await page.reload();
  await page.waitForFunction(() => document.querySelector(".title .status")?.textContent === "cancelled");
  seen.deepLinkTitle = (await page.locator("h1").textContent()).trim();

  // A job that reported rewards: their chart, next to the loss.
  await page.goto(`${server}/dashboard/#/jobs/${rewardedJobId}`);
  const rewardChart = page.locator("section:has(#reward-title) svg");
  await rewardChart.waitFor();
  seen.rewardChart = {points: await rewardChart.getAttribute("data-points"), lines: await rewardChart.locator("polyline").count(),
    label: await rewardChart.getAttribute("aria-label")};

  // The API's refusal is shown as it said it.
  await page.goto(`${server}/dashboard/#/jobs/ftjob-missing`);
  seen.missingJobAlert = (await page.locator("[role=alert]:visible").textContent()).trim();

  // The files page shows the uploaded file and its validation.
  await page.getByRole("link", {name: "Files"}).click();
  const file = page.locator(`tr[data-file="${fileId}"]`);
  await file.waitFor();
  seen.fileCells = (await file.locator("td").allTextContents()).map((text) => text.trim());
  seen.fileIds = await page.locator("tr[data-file]").evaluateAll((rows) => rows.map((row) => row.dataset.file));
  await shot("files");

  // Signing out forgets the key: the prompt is back.
  await page.getByRole("button", {name: "Sign out"}).click();
  await keyField.waitFor();
  seen.signedOut = await page.evaluate(() => sessionStorage.getItem("ftserve.apiKey") === null);
} catch (error) {
  await shot("failure").catch(() => {});
  console.error(error.message);
  process.exitCode = 1;
} finally {
  await browser.close();
  console.log(JSON.stringify(seen));
}
