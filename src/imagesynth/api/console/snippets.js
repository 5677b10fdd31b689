// "Copy as": the request the form would send, as Python SDK, curl and OpenAI SDK code.
// The key is never written into the code: each snippet reads it from the environment.

const py = (v) => {
  if (typeof v === "boolean") return v ? "True" : "False";
  if (typeof v === "number") return String(v);
  return JSON.stringify(v); // a JSON string is a valid Python string literal
};
const shq = (s) => `'${String(s).replace(/'/g, `'"'"'`)}'`;

/** body: the DashScope request ({model, input, parameters}); origin: this service's. */
export function pythonSnippet(body, origin) {
  const args = [`model=${py(body.model)}`, `prompt=${py(body.input.prompt)}`];
  if (body.input.negative_prompt) args.push(`negative_prompt=${py(body.input.negative_prompt)}`);
  if (body.input.ref_img) args.push(`ref_img="./reference.png"  # a local file: the SDK uploads it`);
  for (const [k, v] of Object.entries(body.parameters)) args.push(`${k}=${py(v)}`);
  return [
    "import os",
    "",
    "import dashscope",
    "from dashscope import ImageSynthesis",
    "",
    `dashscope.base_http_api_url = ${py(`${origin}/api/v1`)}`,
    'dashscope.api_key = os.environ["DASHSCOPE_API_KEY"]',
    "",
    "rsp = ImageSynthesis.call(",
    ...args.map((a) => `    ${a},`),
    ")",
    "for result in rsp.output.results:",
    "    print(result.url)",
  ].join("\n");
}

export function curlSnippet(body, origin) {
  const shown = structuredClone(body);
  const oss = Boolean(shown.input.ref_img);
  if (oss) shown.input.ref_img = "https://example.com/reference.png";
  return [
    `curl -s ${origin}/api/v1/services/aigc/text2image/image-synthesis \\`,
    '  -H "Authorization: Bearer $DASHSCOPE_API_KEY" \\',
    '  -H "X-DashScope-Async: enable" \\',
    '  -H "Content-Type: application/json" \\',
    `  -d ${shq(JSON.stringify(shown))}`,
    "# -> {\"output\": {\"task_id\": \"<id>\", \"task_status\": \"PENDING\"}, ...}; then:",
    `curl -s ${origin}/api/v1/tasks/<id> -H "Authorization: Bearer $DASHSCOPE_API_KEY"`,
  ].join("\n");
}

export function openaiSnippet(body, origin) {
  const p = body.parameters;
  const extra = {};
  for (const [k, v] of Object.entries(p)) if (!["n", "size"].includes(k)) extra[k] = v;
  if (body.input.negative_prompt) extra.negative_prompt = body.input.negative_prompt;
  const args = [`model=${py(body.model)}`, `prompt=${py(body.input.prompt)}`];
  if (p.size) args.push(`size=${py(p.size.replace("*", "x"))}`);
  if (p.n !== undefined) args.push(`n=${p.n}`);
  if (Object.keys(extra).length) {
    const items = Object.entries(extra).map(([k, v]) => `${py(k)}: ${py(v)}`).join(", ");
    args.push(`extra_body={${items}}`);
  }
  const lines = [
    "import os",
    "",
    "from openai import OpenAI",
    "",
    `client = OpenAI(base_url=${py(`${origin}/v1`)}, api_key=os.environ["DASHSCOPE_API_KEY"])`,
    "rsp = client.images.generate(",
    ...args.map((a) => `    ${a},`),
    ")",
    "for image in rsp.data:",
    "    print(image.url)",
  ];
  if (body.input.ref_img) lines.unshift("# The reference image is not part of the OpenAI images API; it is left out.");
  return lines.join("\n");
}

export const SNIPPETS = { python: pythonSnippet, curl: curlSnippet, openai: openaiSnippet };
