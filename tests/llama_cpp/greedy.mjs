// Greedy generation and tokenization in llama.cpp (the prebuilt CPU build that node-llama-cpp ships), for
// comparing GGUF exports with the models they came from. One process for many files: starting is the slow part,
// and jobs are read as they come, so the caller can write the next file meanwhile.
// usage: node greedy.mjs < JOBS, one JSON job a line: {"gguf", "prompt": [token ids], "n", "text"}.
// Prints one JSON line per job: {"gguf", "generated": [n token ids, EOS included], "next": [the argmax after
// each prefix of the prompt], "tokens": ids of "text", "addsBos": whether llama.cpp puts BOS before a prompt}.
import {createInterface} from "node:readline";
import {getLlama} from "node-llama-cpp";

const llama = await getLlama({build: "never", gpu: false, logLevel: "error"});
for await (const line of createInterface({input: process.stdin})) {
    if (!line.trim()) continue;
    const job = JSON.parse(line);
    const model = await llama.loadModel({modelPath: job.gguf});
    // llama.cpp's default thread count oversubscribes small machines badly.
    const context = await model.createContext({contextSize: 256, threads: 2});
    const sequence = context.getSequence();
    const generated = [];
    if (job.n > 0) {
        // Temperature 0 is argmax; the end of a turn is a token like any other here.
        for await (const token of sequence.evaluate(job.prompt, {temperature: 0, yieldEogToken: true})) {
            generated.push(token);
            if (generated.length >= job.n) break;
        }
    }
    const next = [];
    for (let length = 1; length <= job.prompt.length && job.n > 0; length++) {
        await sequence.clearHistory();
        for await (const token of sequence.evaluate(job.prompt.slice(0, length), {temperature: 0, yieldEogToken: true})) {
            next.push(token);
            break;
        }
    }
    // Special tokens written in the text are read as themselves, as a chat template's output is.
    const tokens = job.text == null ? null : model.tokenize(job.text, true);
    const addsBos = model.tokens.shouldPrependBosToken;
    console.log(JSON.stringify({gguf: job.gguf, generated, next, tokens, addsBos}));
    sequence.dispose();
    await context.dispose();
    await model.dispose();
}
