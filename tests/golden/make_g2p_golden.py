"""Golden pronunciations for the neural G2P (src/nn/g2p.rs, test `golden_agreement`).

Runs g2p_en 2.1.0's own numpy `G2p.predict` (the GRU seq2seq over checkpoint20.npz) on ~300
words that a pronouncing dictionary would not hold -- invented names, brand and tech words,
pronounceable nonsense, very long words -- and writes tests/fixtures/g2p_golden.tsv, one
`word<TAB>space-separated phones` a line.

The reference is g2p_en's code itself, imported from the unzipped wheel, not a copy. Its module
imports nltk (POS tagger, CMUdict, tokenizer) and inflect (number expansion) at import time;
`predict` uses neither, so they are replaced by inert stand-ins and only numpy is needed.

usage: python3 tests/golden/make_g2p_golden.py UNZIPPED_WHEEL_DIR [OUT_TSV]
       (UNZIPPED_WHEEL_DIR holds g2p_en/g2p.py and g2p_en/checkpoint20.npz)
needs: pip install numpy
"""
import os
import random
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", "fixtures", "g2p_golden.tsv")


def stub_imports():
    """Stand-ins for the nltk and inflect names g2p_en touches at import and in __init__."""
    nltk = types.ModuleType("nltk")
    nltk.pos_tag = lambda words: [(w, "NN") for w in words]
    nltk.download = lambda *a, **k: None
    nltk.data = types.SimpleNamespace(find=lambda *a, **k: None)
    corpus = types.ModuleType("nltk.corpus")
    corpus.cmudict = types.SimpleNamespace(dict=lambda: {})
    tokenize = types.ModuleType("nltk.tokenize")

    class TweetTokenizer:
        def tokenize(self, text):
            return text.split()

    tokenize.TweetTokenizer = TweetTokenizer
    nltk.corpus, nltk.tokenize = corpus, tokenize
    inflect = types.ModuleType("inflect")
    inflect.engine = lambda: None
    sys.modules.update(
        {"nltk": nltk, "nltk.corpus": corpus, "nltk.tokenize": tokenize, "inflect": inflect}
    )


# Hand-picked: names, brands, tech and chemistry words, loanwords, long words (some yield more
# than the decoder's 20-step cap, which the Rust port must reproduce).
HAND = """
zorblax kubernetes nvidia bessandra qualcomm huawei xiaomi grafana prometheus kafka postgres
mysql nginx redis memcached elasticsearch kibana logstash terraform ansible openshift istio
linkerd envoy tensorflow pytorch numpy scipy pandas matplotlib jupyter anaconda conda rustacean
tokio serde candle clippy rustup crates wasm webassembly javascript typescript golang kotlin
scala haskell ocaml erlang elixir clojure julia fortran cobol pascal delphi smalltalk
spotify shopify zalando klarna skype yelp etsy airbnb instagram pinterest snapchat tiktok
whatsapp wechat alibaba tencent baidu samsung hyundai kia toyota mitsubishi suzuki yamaha
kawasaki lamborghini maserati bugatti koenigsegg pagani rimac polestar lucid rivian
jaylinn brayden kaydence maddox jaxon nevaeh aaliyah zaylee kinsley oakleigh everleigh
rhyder knoxley tatum zephyrine quorbin velmira thandiwe nkosana oluwaseun chidinma
siobhan niamh saoirse aoife caoimhe tadhg ruaidhri dervla grainne eoghan
xylophonist zygomorphic quixotically sesquipedalian floccinaucinihilipilification
antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis
supercalifragilisticexpialidocious hippopotomonstrosesquippedaliophobia
incomprehensibilities uncharacteristically counterrevolutionaries electroencephalograph
photosynthesizing deoxyribonucleic methylisothiazolinone acetaminophen ibuprofen
dextromethorphan pseudoephedrine levothyroxine atorvastatin omeprazole metformin
hydrochlorothiazide ciprofloxacin azithromycin amoxicillin
blorptastic snazzlewick frumptious glorbify wumbology yeetable doomscrolling
unfriendable cryptobro mansplainer hangry chillax bromance frenemy glamping staycation
"""


def invented(rng, n):
    """Pronounceable nonsense: onset-vowel-coda syllables, 1 to 5 of them."""
    onsets = "b c d f g h j k l m n p r s t v w y z bl br ch cl cr dr fl fr gl gr kl kr ph pl pr qu sc sh sk sl sm sn sp st str sw th tr tw wh".split()
    vowels = "a e i o u y ai au ea ee ei eu ie oa oo ou ue".split()
    codas = ["", "", "", "b", "ck", "d", "ft", "g", "k", "l", "lk", "m", "mp", "n", "nd", "ng", "nk", "nt", "p", "r", "rd", "rk", "rn", "rt", "s", "sh", "sk", "st", "t", "th", "x", "z"]
    out = []
    while len(out) < n:
        word = "".join(
            rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas)
            for _ in range(rng.randint(1, 5))
        )
        if word not in out:
            out.append(word)
    return out


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    sys.path.insert(0, os.path.abspath(sys.argv[1]))
    out_path = sys.argv[2] if len(sys.argv) == 3 else DEFAULT_OUT
    stub_imports()
    from g2p_en.g2p import G2p

    g2p = G2p()
    words = []
    for w in HAND.split() + invented(random.Random(20240601), 200):
        # predict() maps characters outside a-z to <unk>; the Rust port skips them, so the
        # comparison is only meaningful on a-z words.
        assert w.isascii() and w.isalpha() and w.islower(), w
        if w not in words:
            words.append(w)
    with open(out_path, "w") as f:
        f.write("# word\tphones (g2p_en 2.1.0 G2p.predict, checkpoint20.npz); tests/golden/make_g2p_golden.py\n")
        for w in words:
            f.write(w + "\t" + " ".join(g2p.predict(w)) + "\n")
    print(f"wrote {len(words)} words to {out_path}")


if __name__ == "__main__":
    main()
