// Embeds texts with a GGUF file in llama.cpp, through node-llama-cpp's prebuilt CPU build (engine/export/llama_cpp.py).
// usage: node llama_embed.mjs RUNTIME_DIR MODEL.gguf THREADS IN.json OUT.json [APPEND]
//   IN: a JSON list of texts; OUT: a list of vectors; APPEND: a token id to end every text with (llama_cpp.end_token)
// Texts longer than the model's context are cut to it, special tokens included, as sentence-transformers does.
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [runtimeDir, modelPath, threads, inPath, outPath, append] = process.argv.slice(2);
const dist = join(runtimeDir, "node_modules", "node-llama-cpp", "dist");
const { getLlama, LlamaLogLevel } = await import(pathToFileURL(join(dist, "index.js")).href);
// the begin and end tokens node-llama-cpp's embedding context adds, as llama.cpp's tokenizer does
const { resolveBeginningTokenToPrepend, resolveEndTokenToAppend } = await import(
    pathToFileURL(join(dist, "utils", "tokenizerUtils.js")).href);
const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath });
const trained = model.trainContextSize;
// node-llama-cpp wants a context longer than the input; the positions past `trained` are never used
const context = await model.createEmbeddingContext({
    contextSize: trained + 1, batchSize: trained + 1, threads: Number(threads) });
const added = (resolveBeginningTokenToPrepend(model.vocabularyType, model.tokens) == null ? 0 : 1)
    + (resolveEndTokenToAppend(model.vocabularyType, model.tokens) == null && !append ? 0 : 1);
const room = trained - added;  // texts are cut to the context, their special tokens included
const texts = JSON.parse(readFileSync(inPath, "utf8"));
const vectors = [];
for (const text of texts) {
    const tokens = model.tokenize(text);
    const kept = tokens.length > room ? tokens.slice(0, room) : tokens;
    const embedding = await context.getEmbeddingFor(append ? [...kept, Number(append)] : kept);
    vectors.push(Array.from(embedding.vector));
}
writeFileSync(outPath, JSON.stringify(vectors));
await context.dispose();
await model.dispose();
await llama.dispose();
