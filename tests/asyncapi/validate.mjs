// Parse each AsyncAPI document named on the command line with @asyncapi/parser and print
// {"<file>": [diagnostics...]} as JSON. Exit 1 when any document has an error (severity 0),
// 2 on a usage error. Warnings are printed but do not fail.
import { readFileSync } from "node:fs";
import { Parser } from "@asyncapi/parser";

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: node validate.mjs FILE...");
  process.exit(2);
}
const parser = new Parser();
const report = {};
let failed = false;
for (const file of files) {
  const { document, diagnostics } = await parser.parse(readFileSync(file, "utf8"));
  report[file] = diagnostics.map((d) => ({
    code: d.code,
    message: d.message,
    path: d.path,
    severity: d.severity,
  }));
  if (document === undefined || diagnostics.some((d) => d.severity === 0)) {
    failed = true;
  }
}
console.log(JSON.stringify(report, null, 2));
process.exit(failed ? 1 : 0);
