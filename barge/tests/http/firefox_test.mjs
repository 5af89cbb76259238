// barge's browser page driven in headless Firefox (Debian's firefox-esr, through puppeteer-core
// over WebDriver BiDi): the steps that touch browser-specific APIs — the file input, tus uploads from File objects, a refusal, the tree with a digest on demand, a download, a
// phone-sized screen. Not driven here: choosing a folder (WebDriver BiDi's input.setFiles refuses
// directories in Firefox 153; the page uses the standard webkitdirectory input Firefox implements)
// and the reload mid-upload (no network throttling over BiDi): the Chromium test drives both.
//   node firefox_test.mjs BASE_URL WORKDIR ARTIFACTS
// WORKDIR holds big.bin and huge.bin (over the server's size limit). Prints one JSON line
// with what it saw; exits non-zero (with the reason) if the page misbehaves.
import puppeteer from "puppeteer-core";

const [base, dir, artifacts] = process.argv.slice(2);
const browser = await puppeteer.launch({
  browser: "firefox",
  executablePath: process.env.FIREFOX || "/usr/bin/firefox-esr",
  headless: true,
});
const seen = {};
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1100, height: 900 });
  await page.goto(base);
  seen.userAgent = await page.evaluate(() => navigator.userAgent);
  let step = 0;
  const shot = (name) => page.screenshot({ path: `${artifacts}/${String(++step).padStart(2, "0")}-${name}.png`, fullPage: true });
  const state = (path) => page.evaluate((p) => {
    const u = uploads.find((x) => x.path === p);
    return u && { state: u.state, sent: u.sent, message: u.message };
  }, path);
  const settled = async (path) => {
    await page.waitForFunction((p) => uploads.some((u) => u.path === p && (u.state === "done" || u.state === "failed")),
      { timeout: 180000, polling: 50 }, path);
    return state(path);
  };
  await shot("start");

  // A file through the file input.
  const files = await page.$("#files");
  await files.uploadFile(`${dir}/big.bin`);
  seen.big = await settled("big.bin");
  await shot("file-uploaded");

  // A refusal: over the server's size limit, the server's reason is shown.
  await files.uploadFile(`${dir}/huge.bin`);
  seen.huge = await settled("huge.bin");
  seen.hugeText = await page.$eval(".row.failed .status", (e) => e.textContent);
  await shot("refused");

  // The stored tree, a digest on demand, and the download link's bytes (hashed in the page).
  await page.click("#refresh");
  await page.waitForFunction(() => [...document.querySelectorAll("#tree td.name a")].some((a) => a.textContent === "big.bin"),
    { timeout: 60000, polling: 50 });
  await page.evaluate(() => {
    const a = [...document.querySelectorAll("#tree td.name a")].find((x) => x.textContent === "big.bin");
    a.closest("tr").querySelector("button").click();
  });
  await page.waitForFunction(() => {
    const a = [...document.querySelectorAll("#tree td.name a")].find((x) => x.textContent === "big.bin");
    const d = a && a.closest("tr").querySelector(".digest");
    return d && /^[0-9a-f]{64}$/.test(d.textContent);
  }, { timeout: 60000, polling: 50 });
  seen.digestShown = await page.evaluate(() => {
    const a = [...document.querySelectorAll("#tree td.name a")].find((x) => x.textContent === "big.bin");
    return a.closest("tr").querySelector(".digest").textContent;
  });
  seen.downloadSha256 = await page.evaluate(async () => {
    const a = [...document.querySelectorAll("#tree td.name a")].find((x) => x.textContent === "big.bin");
    const body = await (await fetch(a.href)).arrayBuffer();
    const h = new Uint8Array(await crypto.subtle.digest("SHA-256", body));
    return [...h].map((b) => b.toString(16).padStart(2, "0")).join("");
  });
  seen.treeNames = await page.$$eval("#tree td.name", (tds) => tds.map((t) => t.textContent));
  await shot("digest-and-download");

  // A phone-sized screen: nothing wider than the screen.
  await page.setViewport({ width: 390, height: 844 });
  await page.screenshot({ path: `${artifacts}/page-phone-firefox.png`, fullPage: true });
  seen.phoneOverflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  console.log(JSON.stringify(seen));
} catch (e) {
  console.log(JSON.stringify({ error: String(e), seen }));
  process.exitCode = 1;
} finally {
  await browser.close();
}
