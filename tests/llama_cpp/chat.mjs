// Chat with a GGUF file through llama.cpp (the prebuilt CPU build that node-llama-cpp ships),
// using the chat template stored in the file. Prints one JSON line per prompt: {"prompt", "reply"}.
// usage: node chat.mjs MODEL.gguf PROMPT...
import {getLlama, JinjaTemplateChatWrapper, LlamaChatSession} from "node-llama-cpp";

const [path, ...prompts] = process.argv.slice(2);
const llama = await getLlama({build: "never", gpu: false, logLevel: "warn"});
const model = await llama.loadModel({modelPath: path});
const template = model.fileInfo.metadata.tokenizer.chat_template;
// llama.cpp's default thread count oversubscribes small machines badly.
const context = await model.createContext({contextSize: 512, threads: 2});
for (const prompt of prompts) {
    const sequence = context.getSequence();
    const session = new LlamaChatSession({contextSequence: sequence, chatWrapper: new JinjaTemplateChatWrapper({template})});
    const reply = await session.prompt(prompt, {temperature: 0, maxTokens: 40});
    console.log(JSON.stringify({prompt, reply}));
    session.dispose();
    sequence.dispose();
}
await context.dispose();
await model.dispose();
