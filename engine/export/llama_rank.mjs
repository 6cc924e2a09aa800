// Scores (query, document) pairs with a reranker's GGUF file in llama.cpp's rank pooling, through node-llama-cpp's
// ranking context (engine/export/llama_cpp.py).
// usage: node llama_rank.mjs RUNTIME_DIR MODEL.gguf THREADS IN.json OUT.json
//   IN: a list of [query, document, query tokens kept, document tokens kept]: the pair cut as the model's tokenizer
//   cuts it to its context; OUT: {"scores": the raw score a pair, "tokens": the token ids each pair was scored from}
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [runtimeDir, modelPath, threads, inPath, outPath] = process.argv.slice(2);
const dist = join(runtimeDir, "node_modules", "node-llama-cpp", "dist");
const { getLlama, LlamaLogLevel } = await import(pathToFileURL(join(dist, "index.js")).href);
const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath });
const trained = model.trainContextSize;
const context = await model.createRankingContext({
    contextSize: trained + 1, batchSize: trained + 1, threads: Number(threads) });
const pairs = JSON.parse(readFileSync(inPath, "utf8"));
const scores = [], tokens = [];
for (const [query, document, keepQuery, keepDocument] of pairs) {
    const queryTokens = model.tokenize(query).slice(0, keepQuery);
    const documentTokens = model.tokenize(document).slice(0, keepDocument);
    // rank() gives the sigmoid of the score llama.cpp computes; its logit is that score again
    const probability = await context.rank(queryTokens, documentTokens);
    scores.push(Math.log(probability) - Math.log1p(-probability));
    // the pair as rank() joins it: the file's rerank template around the two texts' tokens
    tokens.push(context._getEvaluationInput(queryTokens, documentTokens).map(Number));
}
writeFileSync(outPath, JSON.stringify({ scores, tokens }));
await context.dispose();
await model.dispose();
await llama.dispose();
