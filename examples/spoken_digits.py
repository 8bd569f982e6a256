"""Spoken digits (the seeds' speech example) on the Free Spoken Digit Dataset: each recording
is cut into 20 time windows, each window's FFT magnitudes (NumPy) pooled into 32 log bands,
and a 5-layer network trained with softmax cross-entropy on the dataset's official split
(recordings 0-4 of each speaker and digit are the test set).
Run: python examples/spoken_digits.py [--epochs 60] [--backend numpy] [--data DIR]"""
import numpy as np
from _common import Timer, parser, plot_history

import graphc as gc
from graphc import nn

WINDOWS, BANDS, LENGTH = 20, 32, 6000  # 0.75 s at 8 kHz: longer recordings are cut


def features(signal: np.ndarray) -> np.ndarray:
    """(WINDOWS * BANDS,) log band energies of the FFT of each time window."""
    s = np.zeros(LENGTH, np.float32)
    s[:min(len(signal), LENGTH)] = signal[:LENGTH]
    s /= max(np.abs(s).max(), 1e-3)
    frames = s.reshape(WINDOWS, -1) * np.hanning(LENGTH // WINDOWS)
    mag = np.abs(np.fft.rfft(frames, axis=1))
    edges = np.unique(np.geomspace(1, mag.shape[1], BANDS + 1).astype(int))
    bands = np.add.reduceat(mag, edges[:-1], axis=1)[:, :BANDS]
    out = np.zeros((WINDOWS, BANDS), np.float32)
    out[:, :bands.shape[1]] = np.log1p(bands)
    return out.reshape(-1)


def main():
    p = parser(__doc__.splitlines()[0], epochs=60)
    args = p.parse_args()
    recs = gc.data.wav_folder(args.data)
    if args.limit:  # keep the whole test split, cut the training split
        train = [r for r in recs if r.index >= 5][:args.limit]
        recs = [r for r in recs if r.index < 5] + train
    feats = np.stack([features(r.signal) for r in recs])
    labels = np.array([r.label for r in recs], np.int32)
    test = np.array([r.index < 5 for r in recs])
    mu, sd = feats[~test].mean(0), feats[~test].std(0) + 1e-6
    feats = (feats - mu) / sd
    d = feats.shape[1]
    model = nn.Sequential(nn.Dense(d, 256, activation="relu"), nn.Dropout(0.3),
                          nn.Dense(256, 128, activation="relu"), nn.Dropout(0.3),
                          nn.Dense(128, 64, activation="relu"),
                          nn.Dense(64, 32, activation="relu"), nn.Dense(32, 10))
    opt = gc.optim.AdamW(lr=1e-3, weight_decay=1e-2)
    with Timer() as t:
        history = gc.fit(model, (feats[~test], labels[~test]), epochs=args.epochs,
                         batch_size=64, optimizer=opt, validation=(feats[test], labels[test]),
                         backend=args.backend, progress=not args.no_progress)
    acc = history.history["val_accuracy"][-1]
    print(f"test accuracy {acc:.4f} ({test.sum()} test recordings, "
          f"{len(history.epochs)} epochs, {t.seconds:.1f} s)")
    plot_history(history, args.plot or "spoken_digits.png", "Free Spoken Digit Dataset")


if __name__ == "__main__":
    main()
