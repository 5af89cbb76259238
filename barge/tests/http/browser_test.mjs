// barge's browser page driven in headless Chromium (Debian's, through playwright-core).
//   node browser_test.mjs BASE_URL WORKDIR ARTIFACTS
// WORKDIR holds big.bin, folder/, slow.bin and huge.bin (over the server's size limit). Prints one
// JSON line with what it saw; exits non-zero (with the reason) if the page misbehaves.
import { chromium } from "playwright-core";

const [base, dir, artifacts] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
const seen = {};
try {
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1100, height: 900 } });
  const page = await context.newPage();
  await page.goto(base);
  const state = (path) => page.evaluate((p) => {
    const u = uploads.find((x) => x.path === p);
    return u && { state: u.state, sent: u.sent, message: u.message, resumedFrom: u.resumedFrom || 0 };
  }, path);
  let step = 0;
  const shot = (name) => page.screenshot({ path: `${artifacts}/${String(++step).padStart(2, "0")}-${name}.png`, fullPage: true });
  await shot("start");
  const settled = (path, timeout = 180000) =>
    page.waitForFunction((p) => uploads.some((u) => u.path === p && (u.state === "done" || u.state === "failed")),
      path, { timeout, polling: 50 }).then(() => state(path));

  // A 50 MiB file through the file input.
  await page.setInputFiles("#files", `${dir}/big.bin`);
  seen.big = await settled("big.bin");
  await shot("file-uploaded");

  // A folder (its tree kept).
  await page.setInputFiles("#folder", `${dir}/folder`);
  await page.waitForFunction(() => uploads.filter((u) => u.path.startsWith("folder/")).length > 0 &&
    uploads.filter((u) => u.path.startsWith("folder/")).every((u) => u.state === "done" || u.state === "failed"),
    null, { timeout: 60000, polling: 50 });
  seen.folder = await page.evaluate(() => uploads.filter((u) => u.path.startsWith("folder/")).map((u) => [u.path, u.state]));
  await shot("folder-uploaded");

  // Reload in the middle of an upload (the network slowed so there is a middle), then choose the
  // file again: it continues from what the server kept.
  const cdp = await context.newCDPSession(page);
  await cdp.send("Network.enable");
  await cdp.send("Network.emulateNetworkConditions",
    { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: 24 << 20 });
  await page.setInputFiles("#files", `${dir}/slow.bin`);
  await page.waitForFunction(() => uploads.some((u) => u.path === "slow.bin" && u.sent >= 40 << 20),
    null, { timeout: 60000, polling: 20 });
  seen.beforeReload = await state("slow.bin");
  await shot("mid-upload");
  await page.reload();
  await shot("reloaded");
  await cdp.send("Network.emulateNetworkConditions",
    { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1 }).catch(() => {});
  await page.setInputFiles("#files", `${dir}/slow.bin`);
  seen.slow = await settled("slow.bin");
  await shot("resumed-and-finished");

  // A refusal: over the server's size limit, the server's reason is shown.
  await page.setInputFiles("#files", `${dir}/huge.bin`);
  seen.huge = await settled("huge.bin");
  seen.hugeText = await page.locator(".row.failed .status").first().textContent();
  await shot("refused");

  // The stored tree, a digest on demand, and a download.
  await page.click("#refresh");
  await page.waitForSelector('#tree a:text-is("big.bin")');
  const row = page.locator("#tree tr", { has: page.locator('a:text-is("big.bin")') });
  await row.locator("button").click();
  seen.digestShown = await row.locator(".digest").textContent();
  const [download] = await Promise.all([page.waitForEvent("download"), row.locator("a").click()]);
  await download.saveAs(`${artifacts}/downloaded.bin`);
  seen.treeNames = await page.locator("#tree td.name").allTextContents();
  await shot("digest-and-download");

  await page.screenshot({ path: `${artifacts}/page.png`, fullPage: true });
  // A phone-sized screen: nothing wider than the screen.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.screenshot({ path: `${artifacts}/page-phone.png`, fullPage: true });
  seen.phoneOverflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  console.log(JSON.stringify(seen));
} catch (e) {
  console.log(JSON.stringify({ error: String(e), seen }));
  process.exitCode = 1;
} finally {
  await browser.close();
}
