"""Layer 4, models: load a model (from a folder, the cache or the Hub), switch on its family's fast path,
add adapters, save / merge / push. A loaded model IS the library's own class, so the stock trainers,
losses and evaluators work on it unchanged.

One module a model class:
    sentence_transformer   FastSentenceTransformer -> sentence_transformers.SentenceTransformer
    cross_encoder          FastCrossEncoder -> sentence_transformers.CrossEncoder
    classifier             FastClassifier -> transformers AutoModelForSequenceClassification
"""

from engine.models.classifier import FastClassifier
from engine.models.cross_encoder import FastCrossEncoder
from engine.models.sentence_transformer import FastSentenceTransformer, family_of, merged_copy

__all__ = ["FastSentenceTransformer", "FastCrossEncoder", "FastClassifier", "family_of", "merged_copy"]
