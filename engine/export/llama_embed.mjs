// Embeds texts with a GGUF file in llama.cpp, through node-llama-cpp's prebuilt CPU build (engine/export/llama_cpp.py).
// usage: node llama_embed.mjs RUNTIME_DIR MODEL.gguf THREADS IN.json OUT.json [PREPEND] [APPEND]
//   IN: a JSON list of texts; OUT: {"vectors": a vector a text, "tokens": the token ids each was embedded from};
//   PREPEND, APPEND: token ids to begin and end every text with (llama_cpp.added_tokens), where llama.cpp adds them
// Texts longer than the model's context are cut to it, special tokens included, as sentence-transformers does.
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [runtimeDir, modelPath, threads, inPath, outPath, prepend, append] = process.argv.slice(2);
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
const begin = prepend ? Number(prepend) : resolveBeginningTokenToPrepend(model.vocabularyType, model.tokens);
const end = append ? Number(append) : resolveEndTokenToAppend(model.vocabularyType, model.tokens);
const room = trained - (begin == null ? 0 : 1) - (end == null ? 0 : 1);  // the text's tokens beside its special ones
const texts = JSON.parse(readFileSync(inPath, "utf8"));
const vectors = [], tokens = [];
for (const text of texts) {
    const kept = model.tokenize(text).slice(0, room);
    const input = [...(begin == null ? [] : [begin]), ...kept, ...(end == null ? [] : [end])];
    // the context adds its own begin and end tokens only where the input does not start and end with them
    const embedding = await context.getEmbeddingFor(input);
    vectors.push(Array.from(embedding.vector));
    tokens.push(input.map(Number));
}
writeFileSync(outPath, JSON.stringify({ vectors, tokens }));
await context.dispose();
await model.dispose();
await llama.dispose();
