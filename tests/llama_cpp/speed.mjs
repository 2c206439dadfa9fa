// Decode speed of one stream through llama.cpp (node-llama-cpp's prebuilt CPU build), for benchmarks/serving.py.
// Prints one JSON line: {"ttft_s", "tokens", "decode_tokens_per_s"}, the median run of REPEATS.
// usage: node speed.mjs MODEL.gguf PROMPT TOKENS REPEATS
import {getLlama, JinjaTemplateChatWrapper, LlamaChatSession} from "node-llama-cpp";

const [path, prompt, tokens, repeats] = process.argv.slice(2);
const llama = await getLlama({build: "never", gpu: false, logLevel: "warn"});
const model = await llama.loadModel({modelPath: path});
const template = model.fileInfo.metadata.tokenizer.chat_template;
const context = await model.createContext({contextSize: 1024, threads: 2});
const runs = [];
for (let r = 0; r < Number(repeats) + 1; r++) {  // the first run warms up and is not counted
    const sequence = context.getSequence();
    const session = new LlamaChatSession({contextSequence: sequence, chatWrapper: new JinjaTemplateChatWrapper({template})});
    const started = performance.now();
    let first = null, count = 0;
    await session.prompt(prompt, {temperature: 0, maxTokens: Number(tokens), customStopTriggers: [],
        onToken: (chunk) => { count += chunk.length; if (first === null) first = performance.now(); }});
    const done = performance.now();
    if (r > 0) runs.push({ttft_s: (first - started) / 1000, tokens: count, decode_tokens_per_s: (count - 1) / ((done - first) / 1000)});
    session.dispose();
    sequence.dispose();
}
runs.sort((a, b) => a.decode_tokens_per_s - b.decode_tokens_per_s);
console.log(JSON.stringify(runs[Math.floor(runs.length / 2)]));
await context.dispose();
await model.dispose();
