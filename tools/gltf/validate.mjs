// Validate glTF/GLB files with the Khronos glTF validator (installed by `npm ci --prefix tools/gltf`).
// Usage: node tools/gltf/validate.mjs FILE [FILE ...]
// Prints one summary line per file plus its errors and warnings; exits 1 if any file has an error, 2 on bad usage.
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const validator = require("gltf-validator");
const SEVERITY = ["error", "warning", "info", "hint"];

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: node validate.mjs FILE [FILE ...]");
  process.exit(2);
}
let failed = false;
for (const file of files) {
  let report;
  try {
    const data = new Uint8Array(await readFile(file));
    report = await validator.validateBytes(data, { uri: file, maxIssues: 0, writeTimestamp: false });
  } catch (error) {
    console.log(`${file}: could not be validated: ${error}`);
    failed = true;
    continue;
  }
  const { numErrors, numWarnings, numInfos, numHints, messages } = report.issues;
  console.log(
    `${file}: ${numErrors} errors, ${numWarnings} warnings, ${numInfos} infos, ${numHints} hints ` +
      `(${report.validatorVersion})`,
  );
  for (const message of messages) {
    if (message.severity <= 1) {
      console.log(`  ${SEVERITY[message.severity]} ${message.code} at ${message.pointer ?? "-"}: ${message.message}`);
    }
  }
  failed ||= numErrors > 0;
}
process.exit(failed ? 1 : 0);
