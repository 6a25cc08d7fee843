// Validate AsyncAPI documents, one JSON document a line on standard input, with the AsyncAPI project's parser.
// Prints one JSON line per document: {"document": n, "valid": bool, "problems": [...]}, where a problem is an
// error or a warning (information and hints are left out). Exits 1 if a document is not valid.
//   node validate.mjs < documents.jsonl
import { createInterface } from 'node:readline';
import { Parser } from '@asyncapi/parser';

const parser = new Parser();
let allValid = true;
let n = 0;
for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  const { document, diagnostics } = await parser.parse(line);
  // Spectral's severities: 0 error, 1 warning, 2 information, 3 hint.
  const problems = diagnostics
    .filter((d) => d.severity <= 1)
    .map((d) => ({ severity: d.severity, code: d.code, path: d.path.join('.'), message: d.message }));
  const valid = Boolean(document) && problems.length === 0;
  allValid &&= valid;
  console.log(JSON.stringify({ document: n++, valid, problems }));
}
process.exit(allValid ? 0 : 1);
