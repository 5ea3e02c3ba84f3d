"""Generate the api_assistant example data (train/val/test JSONL).

A customer-service assistant for the fictional retailer "Lumora" must answer a
question (Chinese or English, paraphrased many ways) with the exact internal
API call. Every intent has ONE fixed answer string per language, so exact-match
accuracy is meaningful.

Questions are compositional: template x (verb, object) synonym pair x
politeness prefix/suffix, with an occasional typo.

Held-out split (per intent, per language):
  * Template patterns are rotated so that each intent has 2 test-only templates
    and 1 val-only template that never occur with that intent in training
    (the same pattern may appear in training with *other* intents, so the test
    measures compositional generalisation, not memorisation).
  * (verb, object) synonym pairs are split the same way: test and val use
    pairs that never occur in training for that intent, while every individual
    synonym word still occurs somewhere in training.
So every test question is a surface form (template + synonym combination) that
the training set never contains for that intent. Every intent appears in every
split, balanced: 20 train / 3 val / 4 test rows per intent.

Run:  python examples/api_assistant/gen_data.py   (deterministic, seed below)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 20240611
HERE = Path(__file__).resolve().parent

# name -> (signature, zh verbs, zh objects, en verbs, en objects)
# Verb/object synonyms combine freely inside the templates below.
INTENTS: dict[str, dict] = {
    "getUserBalance": {
        "sig": "getUserBalance(userId)",
        "zh_v": ["查询", "查看", "查一下"],
        "zh_o": ["用户余额", "账户余额", "钱包余额"],
        "en_v": ["check", "look up", "see"],
        "en_o": ["a user's balance", "the account balance", "my wallet balance"],
    },
    "resetPassword": {
        "sig": "resetPassword(userId)",
        "zh_v": ["重置", "找回", "重新设置"],
        "zh_o": ["登录密码", "账户密码", "密码"],
        "en_v": ["reset", "recover", "change"],
        "en_o": ["my password", "the login password", "a forgotten password"],
    },
    "getOrderStatus": {
        "sig": "getOrderStatus(orderId)",
        "zh_v": ["查询", "查看", "了解"],
        "zh_o": ["订单状态", "订单进度", "订单的处理情况"],
        "en_v": ["check", "find out", "view"],
        "en_o": ["the order status", "where my order is at", "the progress of an order"],
    },
    "cancelOrder": {
        "sig": "cancelOrder(orderId)",
        "zh_v": ["取消", "撤销", "作废"],
        "zh_o": ["订单", "一笔订单", "刚下的订单"],
        "en_v": ["cancel", "call off", "void"],
        "en_o": ["an order", "my order", "the order I just placed"],
    },
    "updateShippingAddress": {
        "sig": "updateShippingAddress(orderId, address)",
        "zh_v": ["修改", "更改", "更新"],
        "zh_o": ["收货地址", "配送地址", "订单的寄送地址"],
        "en_v": ["change", "update", "edit"],
        "en_o": ["the shipping address", "the delivery address", "where my order ships to"],
    },
    "requestRefund": {
        "sig": "requestRefund(orderId)",
        "zh_v": ["申请", "办理", "发起"],
        "zh_o": ["退款", "订单退款", "退钱"],
        "en_v": ["request", "get", "apply for"],
        "en_o": ["a refund", "my money back", "a refund on an order"],
    },
    "listInvoices": {
        "sig": "listInvoices(userId, month)",
        "zh_v": ["查看", "列出", "导出"],
        "zh_o": ["某个月的发票", "月度发票", "每月的发票记录"],
        "en_v": ["list", "see", "pull up"],
        "en_o": ["the invoices for a month", "my monthly invoices", "last month's invoices"],
    },
    "fetchCouponWallet": {
        "sig": "fetchCouponWallet(userId)",
        "zh_v": ["查看", "查询", "找到"],
        "zh_o": ["优惠券", "我的优惠券", "可用的折扣券"],
        "en_v": ["see", "check", "view"],
        "en_o": ["my coupons", "available coupons", "the discount vouchers I have"],
    },
    "traceParcel": {
        "sig": "traceParcel(trackingNo)",
        "zh_v": ["跟踪", "查询", "查看"],
        "zh_o": ["物流信息", "快递进度", "包裹的配送轨迹"],
        "en_v": ["track", "trace", "follow"],
        "en_o": ["a parcel", "my package", "the shipment in transit"],
    },
    "bindMobileNumber": {
        "sig": "bindMobileNumber(userId, phone)",
        "zh_v": ["修改", "换绑", "更换"],
        "zh_o": ["绑定的手机号", "手机号码", "预留手机号"],
        "en_v": ["change", "update", "replace"],
        "en_o": ["my phone number", "the linked mobile number", "the phone on the account"],
    },
    "queryLoyaltyPoints": {
        "sig": "queryLoyaltyPoints(userId)",
        "zh_v": ["查询", "查看", "看一下"],
        "zh_o": ["会员积分", "积分余额", "我攒的积分"],
        "en_v": ["check", "see", "look up"],
        "en_o": ["my loyalty points", "the reward points", "how many points I have"],
    },
    "submitAccountClosure": {
        "sig": "submitAccountClosure(userId)",
        "zh_v": ["注销", "关闭", "删除"],
        "zh_o": ["账户", "账号", "会员账号"],
        "en_v": ["close", "delete", "deactivate"],
        "en_o": ["my account", "a user account", "the customer account"],
    },
}

# Generic question patterns; {v} = verb synonym, {o} = object synonym.
ZH_TEMPLATES = [
    "如何{v}{o}？",
    "我想{v}{o}，该怎么做？",
    "{v}{o}用哪个接口？",
    "有没有办法{v}{o}？",
    "要{v}{o}的话调什么接口？",
    "怎么才能{v}{o}",
    "{v}{o}的接口是哪个？",
    "帮我看看怎么{v}{o}",
    "{v}{o}应该调用什么？",
    "请告诉我{v}{o}的方法",
]
EN_TEMPLATES = [
    "How do I {v} {o}?",
    "What's the API to {v} {o}?",
    "I want to {v} {o}.",
    "Which endpoint should I call to {v} {o}?",
    "Is there a way to {v} {o}?",
    "Need to {v} {o}, what do I use?",
    "What's the way to {v} {o}?",
    "Tell me how to {v} {o}",
    "What call lets me {v} {o}?",
    "Which API should be used to {v} {o}?",
]
ZH_PREFIX = ["", "", "你好，", "请问", "麻烦问一下，", "客服您好，", "在吗？"]
ZH_SUFFIX = ["", "", "谢谢", "谢谢！", "急", "在线等"]
EN_PREFIX = ["", "", "Hi, ", "Hello! ", "Quick question: ", "Excuse me, ", "Hey there, "]
EN_SUFFIX = ["", "", " Thanks!", " Thank you.", " Please help.", " Thx"]

# Common Chinese mis-typings (homophones / IME slips).
ZH_TYPOS = {
    "查询": "查寻",
    "账户": "帐户",
    "账号": "帐号",
    "修改": "修该",
    "订单": "定单",
    "接口": "借口",
    "地址": "地止",
    "怎么": "怎麽",
    "积分": "积份",
}
TYPO_RATE = 0.12

N_TRAIN, N_VAL, N_TEST = 20, 3, 4  # rows per intent (both languages together)


def answer(sig: str, lang: str) -> str:
    return f"请调用 {sig} 接口。" if lang == "zh" else f"Call {sig}."


def en_typo(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    idx = [i for i, w in enumerate(words) if w.isalpha() and len(w) >= 4]
    if not idx:
        return text
    i = rng.choice(idx)
    w = words[i]
    j = rng.randrange(len(w) - 1)
    words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]  # swap two adjacent letters
    return " ".join(words)


def zh_typo(text: str, rng: random.Random) -> str:
    hits = [k for k in ZH_TYPOS if k in text]
    if not hits:
        return text.rstrip("？") if text.endswith("？") else text
    k = rng.choice(hits)
    return text.replace(k, ZH_TYPOS[k], 1)


def split_templates(n: int, i: int) -> tuple[list[int], list[int], list[int]]:
    """Rotate held-out templates across intents: 2 test, 1 val, rest train."""
    test = [(2 * i) % n, (2 * i + 1) % n]
    val = [(2 * i + 2) % n]
    train = [t for t in range(n) if t not in test and t not in val]
    return train, val, test


def split_pairs(nv: int, no: int, i: int) -> tuple[list, list, list]:
    """Split the (verb, object) grid: test pairs and val pairs lie on distinct
    'diagonals' so each single synonym still appears in some train pair."""
    pairs = [(a, b) for a in range(nv) for b in range(no)]
    # diagonal d = {(a, (a + d) % no)}; use d=i%no for test-ish, pick 2 test + 1 val
    d = i % no
    diag = [(a, (a + d) % no) for a in range(nv)]
    test = diag[:2]
    val = [diag[2]]
    train = [p for p in pairs if p not in test and p not in val]
    return train, val, test


def make_question(lang: str, tmpl: str, v: str, o: str, rng: random.Random) -> str:
    core = tmpl.format(v=v, o=o)
    if lang == "zh":
        suffix = rng.choice(ZH_SUFFIX)
        if suffix and core[-1] not in "？！。":
            suffix = "，" + suffix
        prefix = rng.choice(ZH_PREFIX)
        if prefix == "请问" and tmpl.startswith(("请", "帮")):
            prefix = "你好，"  # "请问请告诉我…" reads badly
        q = prefix + core + suffix
        if rng.random() < TYPO_RATE:
            q = zh_typo(q, rng)
    else:
        prefix = rng.choice(EN_PREFIX)
        if prefix.endswith(", ") and not core.startswith("I "):
            core = core[0].lower() + core[1:]  # "Hi, how do I ..."
        suffix = rng.choice(EN_SUFFIX)
        if suffix and core[-1] not in "?.!":
            core += "."
        q = prefix + core + suffix
        if rng.random() < TYPO_RATE:
            q = en_typo(q, rng)
    return q


def sample(lang, spec, tmpl_ids, pair_ids, n, *, rng, seen):
    """n distinct questions; templates and synonym pairs are cycled (in a
    shuffled order) so each one allowed for this split is used evenly."""
    templates = ZH_TEMPLATES if lang == "zh" else EN_TEMPLATES
    verbs, objs = spec[f"{lang}_v"], spec[f"{lang}_o"]
    t_ids, p_ids = list(tmpl_ids), list(pair_ids)
    rng.shuffle(t_ids)
    rng.shuffle(p_ids)
    out = []
    k = 0
    while len(out) < n:
        t = t_ids[k % len(t_ids)]
        a, b = p_ids[(k + k // len(t_ids)) % len(p_ids)]
        k += 1
        q = make_question(lang, templates[t], verbs[a], objs[b], rng)
        if q in seen:
            if k > 50 * n:
                raise RuntimeError("could not find enough distinct questions")
            continue
        seen.add(q)
        out.append((q, t, (a, b)))
    return out


def build() -> dict[str, list[dict]]:
    rng = random.Random(SEED)
    splits: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    seen: set[str] = set()
    for i, (name, spec) in enumerate(INTENTS.items()):
        for lang in ("zh", "en"):
            n_tmpl = len(ZH_TEMPLATES if lang == "zh" else EN_TEMPLATES)
            # offset en rotation so zh/en hold out different template slots
            tr_t, va_t, te_t = split_templates(n_tmpl, i if lang == "zh" else i + 5)
            tr_p, va_p, te_p = split_pairs(len(spec[f"{lang}_v"]), len(spec[f"{lang}_o"]), i)
            # val: 3 per intent -> alternate 2/1 between languages by intent index
            n_val = (2 if lang == "zh" else 1) if i % 2 == 0 else (1 if lang == "zh" else 2)
            for split, t_ids, p_ids, n in (
                ("train", tr_t, tr_p, N_TRAIN // 2),
                ("val", va_t, va_p, n_val),
                ("test", te_t, te_p, N_TEST // 2),
            ):
                for q, _t, _p in sample(lang, spec, t_ids, p_ids, n, rng=rng, seen=seen):
                    splits[split].append(
                        {
                            "messages": [
                                {"role": "user", "content": q},
                                {"role": "assistant", "content": answer(spec["sig"], lang)},
                            ],
                            "label": name,
                        }
                    )
    for rows in splits.values():
        rng.shuffle(rows)
    return splits


def check(splits: dict[str, list[dict]]) -> None:
    train_q = {r["messages"][0]["content"] for r in splits["train"]}
    for s in ("val", "test"):
        assert not train_q & {r["messages"][0]["content"] for r in splits[s]}, s
    # every intent in every split; every synonym word occurs in a train question
    for s, rows in splits.items():
        assert {r["label"] for r in rows} == set(INTENTS), s
    train_text = "\n".join(train_q)
    for spec in INTENTS.values():
        for key in ("zh_v", "zh_o", "en_v", "en_o"):
            for w in spec[key]:
                assert w in train_text, (key, w)


def main() -> None:
    splits = build()
    check(splits)
    for name, rows in splits.items():
        with open(HERE / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(f"{name}: {len(rows)} rows")


if __name__ == "__main__":
    main()
