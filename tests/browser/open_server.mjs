// What a web page in a real Chromium can do to an open server (no API keys), for
// tests/integration/test_open_server_browser.py.
// usage: node open_server.mjs SERVER_URL   (SERVER_URL: http://127.0.0.1:PORT)
// Prints one JSON object of what it saw. CHROMIUM names another browser binary than /usr/bin/chromium.
import {chromium} from "playwright-core";

const server = process.argv[2];
const port = new URL(server).port;
const chromiumPath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const LINE = '{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}\n';

// rebind.example stands for an attacker's name whose DNS answer turned into 127.0.0.1 after the page loaded.
const browser = await chromium.launch({
  executablePath: chromiumPath, args: ["--host-resolver-rules=MAP rebind.example 127.0.0.1"],
});
const seen = {pageErrors: []};
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(10_000);
  page.on("pageerror", (error) => seen.pageErrors.push(error.message));

  // The dashboard, from the server's own origin, reads and writes as before.
  await page.goto(`${server}/dashboard/#/files`);
  await page.locator("tr[data-file]:visible, p.muted:visible").first().waitFor();
  seen.sameOriginUpload = await page.evaluate(async (line) => {
    const form = new FormData();
    form.append("purpose", "fine-tune");
    form.append("file", new File([line], "dashboard.jsonl"));
    const response = await fetch("/v1/files", {method: "POST", body: form});
    return response.status;
  }, LINE);
  await page.reload();
  await page.locator("tr[data-file]", {hasText: "dashboard.jsonl"}).waitFor();
  seen.listed = true;

  // Another site's page submits a multipart form with a file to the server: no preflight, and the browser
  // adds its own Origin and Sec-Fetch-Site.
  await page.route("http://evil.example/", (route) => route.fulfill({contentType: "text/html", body: `
    <form method="post" enctype="multipart/form-data" action="${server}/v1/files">
      <input name="purpose" value="fine-tune"><input type="file" name="file">
    </form>`}));
  await page.goto("http://evil.example/");
  const [answer] = await Promise.all([
    page.waitForResponse(`${server}/v1/files`),
    page.evaluate((line) => {
      const files = new DataTransfer();
      files.items.add(new File([line], "evil.jsonl"));
      document.querySelector("input[type=file]").files = files.files;
      document.querySelector("form").submit();
    }, LINE),
  ]);
  seen.crossSiteForm = {status: answer.status(), code: JSON.parse(await answer.text()).error?.code};

  // DNS rebinding: the page now reaches the server under the attacker's name, as its own origin.
  const rebound = await page.goto(`http://rebind.example:${port}/v1/files`);
  seen.rebound = {status: rebound.status(), code: JSON.parse(await rebound.text()).error?.code};
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
