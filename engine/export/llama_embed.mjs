// Embeds texts with a GGUF file in llama.cpp, through node-llama-cpp's prebuilt CPU build (engine/export/llama_cpp.py).
// usage: node llama_embed.mjs RUNTIME_DIR MODEL.gguf THREADS IN.json OUT.json   (IN: a JSON list of texts; OUT: a list of vectors)
// Texts longer than the model's context are cut to it, special tokens included, as sentence-transformers does.
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [runtimeDir, modelPath, threads, inPath, outPath] = process.argv.slice(2);
const { getLlama, LlamaLogLevel } = await import(
    pathToFileURL(join(runtimeDir, "node_modules", "node-llama-cpp", "dist", "index.js")).href);
const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath });
const trained = model.trainContextSize;
// node-llama-cpp wants a context longer than the input; the positions past `trained` are never used
const context = await model.createEmbeddingContext({
    contextSize: trained + 1, batchSize: trained + 1, threads: Number(threads) });
const texts = JSON.parse(readFileSync(inPath, "utf8"));
const vectors = [];
for (const text of texts) {
    const tokens = model.tokenize(text);
    const room = trained - 2;  // the model's begin and end tokens, which the context adds
    const embedding = await context.getEmbeddingFor(tokens.length > room ? tokens.slice(0, room) : tokens);
    vectors.push(Array.from(embedding.vector));
}
writeFileSync(outPath, JSON.stringify(vectors));
await context.dispose();
await model.dispose();
await llama.dispose();
