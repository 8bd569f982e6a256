"""A character-level LSTM language model on tiny Shakespeare: embedding, one LSTM layer
unrolled over 64 characters (backprop through time), a dense read-out; then sampled text.
Run: python examples/char_rnn.py [--epochs 3] [--hidden 256] [--backend numpy] [--data DIR]"""
import numpy as np
from _common import Timer, parser, plot_history

import graphc as gc
from graphc import nn


def sample(model, text, start: str, length: int, rng, temperature: float = 0.8) -> str:
    """Feed `start`, then draw `length` characters one at a time, carrying the LSTM state."""
    emb, lstm, head = model.layers
    hsz = lstm.hidden_size
    ids = gc.placeholder("sample/ids", (1, 1), dtype="int32")
    h = gc.placeholder("sample/h", (1, hsz))
    c = gc.placeholder("sample/c", (1, hsz))
    out, (h2, c2) = lstm.run(gc.transpose(emb(ids), (1, 0, 2)), state=(h, c))
    step = gc.compile([head(out[0]) / temperature, h2, c2])
    hv, cv = np.zeros((1, hsz), np.float32), np.zeros((1, hsz), np.float32)
    chars = list(start)
    for ch in start[:-1]:
        _, hv, cv = step({ids: text.encode(ch).reshape(1, 1), h: hv, c: cv})
    nxt = start[-1]
    for _ in range(length):
        logits, hv, cv = step({ids: text.encode(nxt).reshape(1, 1), h: hv, c: cv})
        p = np.exp(logits[0] - logits[0].max())
        nxt = text.vocab[rng.choice(len(p), p=p / p.sum())]
        chars.append(nxt)
    return "".join(chars)


def main():
    p = parser(__doc__.splitlines()[0], epochs=3)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()
    text = gc.data.char_text(directory=args.data)
    train_ids, val_ids = text.split(0.9)
    x, y = text.windows(train_ids, args.seq)
    x, y = x[:args.limit], y[:args.limit]
    xv, yv = text.windows(val_ids, args.seq)
    vocab = text.vocab_size
    model = nn.Sequential(nn.Embedding(vocab, 64), nn.LSTM(64, args.hidden, batch_first=True),
                          nn.Dense(args.hidden, vocab))

    def loss(out, labels):
        return gc.softmax_cross_entropy(gc.reshape(out, (-1, vocab)), gc.reshape(labels, (-1,)))

    opt = gc.optim.Adam(lr=3e-3, clip_grad_norm=5.0)
    with Timer() as t:
        history = gc.fit(model, (x, y), epochs=args.epochs, batch_size=args.batch_size,
                         loss=loss, optimizer=opt, validation=(xv, yv), eval_batch_size=256,
                         backend=args.backend, progress=not args.no_progress)
    print(f"validation loss per epoch: "
          f"{', '.join(f'{v:.3f}' for v in history.history['val_loss'])} "
          f"({len(history.epochs)} epochs, {t.seconds:.1f} s)")
    print("sample:\n" + sample(model, text, "ROMEO:\n", 300, np.random.default_rng(0)))
    plot_history(history, args.plot or "char_rnn.png", "char-LSTM, tiny Shakespeare")


if __name__ == "__main__":
    main()
