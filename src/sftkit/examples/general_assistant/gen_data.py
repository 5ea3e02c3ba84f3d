"""Generate the general_assistant example: a mixed, multi-task instruction set.

Ten task types in the OpenAI ``messages`` layout (train/val/test.jsonl), each
row tagged with a top-level "task" field, Chinese and English mixed:

  qa, code, translation, summarisation, extraction, classification,
  rewriting, math, dialogue (multi-turn), json_output

plus an 11th, ``reasoning``, in the chain-of-thought layout
{"question", "thinking", "answer", "task"} in separate files
(cot.jsonl = train, cot_val.jsonl, cot_test.jsonl).

All content is generated here from small tables; answers are computed (math,
reasoning, json_output, summarisation) or checked (code: every reference
implementation is executed against test cases before it is written out).
20 rows per task, split 14 / 2 / 4 per task (stratified).

Run:  python examples/general_assistant/gen_data.py   (deterministic)
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

SEED = 1234
HERE = Path(__file__).resolve().parent
PER_TASK = 20
N_VAL, N_TEST = 2, 4  # per task; the rest is train


def chat(*turns: str) -> list[dict]:
    roles = ["user", "assistant"]
    return [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]


# ------------------------------------------------------------------- qa
CAPITALS = [  # (country zh, capital zh, country en, capital en)
    ("法国", "巴黎", "France", "Paris"),
    ("日本", "东京", "Japan", "Tokyo"),
    ("埃及", "开罗", "Egypt", "Cairo"),
    ("加拿大", "渥太华", "Canada", "Ottawa"),
    ("澳大利亚", "堪培拉", "Australia", "Canberra"),
    ("德国", "柏林", "Germany", "Berlin"),
    ("意大利", "罗马", "Italy", "Rome"),
    ("西班牙", "马德里", "Spain", "Madrid"),
    ("肯尼亚", "内罗毕", "Kenya", "Nairobi"),
    ("韩国", "首尔", "South Korea", "Seoul"),
    ("泰国", "曼谷", "Thailand", "Bangkok"),
    ("阿根廷", "布宜诺斯艾利斯", "Argentina", "Buenos Aires"),
]
ELEMENTS = [  # (zh, en, symbol)
    ("金", "gold", "Au"),
    ("铁", "iron", "Fe"),
    ("钠", "sodium", "Na"),
    ("银", "silver", "Ag"),
    ("钾", "potassium", "K"),
    ("铜", "copper", "Cu"),
    ("氧", "oxygen", "O"),
    ("氦", "helium", "He"),
]


def gen_qa(rng: random.Random) -> list[dict]:
    rows = []
    for i, (czh, kzh, cen, ken) in enumerate(CAPITALS):
        if i % 2 == 0:
            rows.append(chat(f"{czh}的首都是哪里？", f"{czh}的首都是{kzh}。"))
        else:
            rows.append(chat(f"What is the capital of {cen}?", f"The capital of {cen} is {ken}."))
    for i, (zh, en, sym) in enumerate(ELEMENTS):
        if i % 2 == 0:
            rows.append(chat(f"What is the chemical symbol for {en}?", f"The chemical symbol for {en} is {sym}."))
        else:
            rows.append(chat(f"{zh}的化学元素符号是什么？", f"{zh}的元素符号是 {sym}。"))
    return rows


# ------------------------------------------------------------------- code
# (signature, English spec, Chinese spec, source, tests as (args, expected))
CODE_SPECS: list[tuple[str, str, str, str, list]] = [
    (
        "is_even(n)",
        "returns True if the integer n is even",
        "判断整数 n 是否为偶数",
        "def is_even(n):\n    return n % 2 == 0",
        [((4,), True), ((7,), False), ((0,), True)],
    ),
    (
        "reverse_string(s)",
        "returns the string s reversed",
        "返回字符串 s 的反转",
        "def reverse_string(s):\n    return s[::-1]",
        [(("abc",), "cba"), (("",), "")],
    ),
    (
        "factorial(n)",
        "returns n! for a non-negative integer n",
        "计算非负整数 n 的阶乘",
        "def factorial(n):\n    result = 1\n    for i in range(2, n + 1):\n        result *= i\n    return result",
        [((0,), 1), ((5,), 120)],
    ),
    (
        "fibonacci(n)",
        "returns the n-th Fibonacci number, with fibonacci(0) == 0 and fibonacci(1) == 1",
        "返回第 n 个斐波那契数，其中 fibonacci(0) == 0，fibonacci(1) == 1",
        "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
        [((0,), 0), ((1,), 1), ((10,), 55)],
    ),
    (
        "count_vowels(s)",
        "counts the vowels (a, e, i, o, u, case-insensitive) in s",
        "统计字符串 s 中元音字母（a、e、i、o、u，不区分大小写）的个数",
        'def count_vowels(s):\n    return sum(1 for ch in s.lower() if ch in "aeiou")',
        [(("Hello World",), 3), (("xyz",), 0)],
    ),
    (
        "is_palindrome(s)",
        "returns True if s reads the same forwards and backwards",
        "判断字符串 s 是否为回文",
        "def is_palindrome(s):\n    return s == s[::-1]",
        [(("level",), True), (("hello",), False)],
    ),
    (
        "sum_digits(n)",
        "returns the sum of the decimal digits of a non-negative integer n",
        "返回非负整数 n 各位数字之和",
        "def sum_digits(n):\n    return sum(int(d) for d in str(n))",
        [((1234,), 10), ((0,), 0)],
    ),
    (
        "celsius_to_fahrenheit(c)",
        "converts a temperature from Celsius to Fahrenheit",
        "把摄氏温度 c 转换为华氏温度",
        "def celsius_to_fahrenheit(c):\n    return c * 9 / 5 + 32",
        [((100,), 212.0), ((0,), 32.0)],
    ),
    (
        "unique(items)",
        "returns the items of a list without duplicates, keeping first-seen order",
        "对列表去重并保持元素第一次出现的顺序",
        "def unique(items):\n    seen = set()\n    out = []\n    for x in items:\n        if x not in seen:\n"
        "            seen.add(x)\n            out.append(x)\n    return out",
        [(([3, 1, 3, 2, 1],), [3, 1, 2])],
    ),
    (
        "gcd(a, b)",
        "returns the greatest common divisor of two positive integers",
        "求两个正整数的最大公约数",
        "def gcd(a, b):\n    while b:\n        a, b = b, a % b\n    return a",
        [((12, 18), 6), ((7, 5), 1)],
    ),
    (
        "is_prime(n)",
        "returns True if n is a prime number",
        "判断 n 是否为质数",
        "def is_prime(n):\n    if n < 2:\n        return False\n    i = 2\n    while i * i <= n:\n"
        "        if n % i == 0:\n            return False\n        i += 1\n    return True",
        [((2,), True), ((15,), False), ((1,), False), ((97,), True)],
    ),
    (
        "clamp(x, lo, hi)",
        "limits x to the range [lo, hi]",
        "把 x 限制在区间 [lo, hi] 之内",
        "def clamp(x, lo, hi):\n    return max(lo, min(x, hi))",
        [((5, 0, 3), 3), ((-1, 0, 3), 0), ((2, 0, 3), 2)],
    ),
    (
        "chunk(items, size)",
        "splits a list into consecutive chunks of length size (the last may be shorter)",
        "把列表按长度 size 切分成若干块（最后一块可以更短）",
        "def chunk(items, size):\n    return [items[i:i + size] for i in range(0, len(items), size)]",
        [(([1, 2, 3, 4, 5], 2), [[1, 2], [3, 4], [5]])],
    ),
    (
        "word_count(text)",
        "returns a dict mapping each whitespace-separated word to its count",
        "统计文本中每个（以空白分隔的）单词出现的次数，返回字典",
        "def word_count(text):\n    counts = {}\n    for w in text.split():\n        counts[w] = counts.get(w, 0) + 1\n"
        "    return counts",
        [(("a b a",), {"a": 2, "b": 1})],
    ),
    (
        "second_largest(nums)",
        "returns the second largest distinct value in a list of numbers",
        "返回数字列表中第二大的不同值",
        "def second_largest(nums):\n    values = sorted(set(nums), reverse=True)\n    return values[1]",
        [(([3, 5, 5, 1],), 3)],
    ),
    (
        "merge_dicts(a, b)",
        "returns a new dict with the keys of a and b; values from b win on conflicts",
        "合并两个字典，返回新字典；键冲突时以 b 的值为准",
        "def merge_dicts(a, b):\n    merged = dict(a)\n    merged.update(b)\n    return merged",
        [(({"x": 1, "y": 2}, {"y": 3}), {"x": 1, "y": 3})],
    ),
    (
        "running_sum(nums)",
        "returns the running (cumulative) sums of a list",
        "返回列表的前缀和（累加和）列表",
        "def running_sum(nums):\n    total = 0\n    out = []\n    for x in nums:\n        total += x\n"
        "        out.append(total)\n    return out",
        [(([1, 2, 3],), [1, 3, 6])],
    ),
    (
        "title_case(s)",
        "capitalises the first letter of every word in s",
        "把字符串中每个单词的首字母大写",
        'def title_case(s):\n    return " ".join(w[:1].upper() + w[1:] for w in s.split(" "))',
        [(("hello big world",), "Hello Big World")],
    ),
    (
        "average(nums)",
        "returns the arithmetic mean of a non-empty list of numbers",
        "计算非空数字列表的平均值",
        "def average(nums):\n    return sum(nums) / len(nums)",
        [(([1, 2, 3, 4],), 2.5)],
    ),
    (
        "count_words_longer_than(text, k)",
        "counts the words in text that have more than k characters",
        "统计文本中长度大于 k 的单词个数",
        "def count_words_longer_than(text, k):\n    return sum(1 for w in text.split() if len(w) > k)",
        [(("a quick brown fox", 3), 2)],
    ),
]


def check_code() -> None:
    for sig, _en, _zh, src, tests in CODE_SPECS:
        ns: dict = {}
        exec(src, ns)  # our own reference implementations
        fn = ns[sig.split("(")[0]]
        for args, expected in tests:
            got = fn(*args)
            assert got == expected, (sig, args, got, expected)


def gen_code(rng: random.Random) -> list[dict]:
    check_code()
    rows = []
    for i, (sig, en, zh, src, tests) in enumerate(CODE_SPECS):
        args, expected = tests[0]
        call = f"{sig.split('(')[0]}({', '.join(repr(a) for a in args)})"
        if i % 2 == 0:
            q = f"Write a Python function `{sig}` that {en}."
            a = f"```python\n{src}\n```\n\nFor example, `{call}` returns `{expected!r}`."
        else:
            q = f"用 Python 写一个函数 `{sig}`，功能是：{zh}。"
            a = f"```python\n{src}\n```\n\n例如，`{call}` 的返回值是 `{expected!r}`。"
        rows.append(chat(q, a))
    return rows


# ------------------------------------------------------------------- translation
PHRASES = [  # (zh, en)
    ("今天天气很好。", "The weather is nice today."),
    ("请问附近有地铁站吗？", "Is there a subway station nearby?"),
    ("我每天早上七点起床。", "I get up at seven every morning."),
    ("这本书非常有意思。", "This book is very interesting."),
    ("会议推迟到下周一。", "The meeting has been postponed to next Monday."),
    ("我们明天一起吃午饭吧。", "Let's have lunch together tomorrow."),
    ("他正在学习弹钢琴。", "He is learning to play the piano."),
    ("请把窗户关上。", "Please close the window."),
    ("这家餐厅的菜很好吃。", "The food at this restaurant is delicious."),
    ("我的手机没电了。", "My phone has run out of battery."),
    ("周末你有什么计划？", "What are your plans for the weekend?"),
    ("火车晚点了二十分钟。", "The train was twenty minutes late."),
    ("她是一名软件工程师。", "She is a software engineer."),
    ("多喝水对身体有好处。", "Drinking more water is good for your health."),
    ("图书馆晚上九点关门。", "The library closes at nine in the evening."),
    ("我把钥匙忘在家里了。", "I left my keys at home."),
    ("这个问题比我想的更复杂。", "This problem is more complicated than I thought."),
    ("谢谢你的帮助。", "Thank you for your help."),
    ("明天可能会下雨。", "It might rain tomorrow."),
    ("我们需要在周五之前完成这个项目。", "We need to finish this project before Friday."),
]
ZH2EN = ["把下面这句话翻译成英文：{x}", "请翻译成英语：{x}", "Translate into English: {x}"]
EN2ZH = ["Translate into Chinese: {x}", "把这句英文翻译成中文：{x}", "请将下面的句子译为中文：{x}"]


def gen_translation(rng: random.Random) -> list[dict]:
    rows = []
    for i, (zh, en) in enumerate(PHRASES):
        if i % 2 == 0:
            rows.append(chat(rng.choice(ZH2EN).format(x=zh), en))
        else:
            rows.append(chat(rng.choice(EN2ZH).format(x=en), zh))
    return rows


# ------------------------------------------------------------------- summarisation
ORGS_EN = [
    "Greenfield High School",
    "the Riverside Library",
    "Northwind Robotics",
    "the City Cycling Club",
    "Maple Community Center",
]
EVENTS_EN = [
    ("a science fair", "the projects on renewable energy drew the most visitors"),
    ("a book swap", "children's books were the most popular"),
    ("an open day", "the demo of a warehouse robot was the highlight"),
    ("a charity ride", "the ride raised money for a local food bank"),
    ("a free health check", "many older residents had their blood pressure checked"),
]
PLANS_EN = [
    "hold the event again next year",
    "make it a monthly event",
    "expand it to two days",
    "invite nearby schools next time",
]
ORGS_ZH = ["阳光小学", "滨江社区", "青禾科技公司", "市图书馆", "东湖志愿者协会"]
EVENTS_ZH = [
    ("读书节", "亲子共读环节最受欢迎"),
    ("旧物交换市集", "儿童玩具和图书交换最活跃"),
    ("开放日", "无人机表演吸引了大量观众"),
    ("义诊活动", "很多老人现场测量了血压和血糖"),
    ("环保徒步", "参与者沿途捡拾了近百袋垃圾"),
]
PLANS_ZH = ["明年继续举办", "改为每季度举办一次", "扩大到全区范围", "增加线上报名渠道"]
CITIES_EN = ["Springfield", "Lakeside", "Hillview", "Bayport"]
CITIES_ZH = ["杭州", "成都", "苏州", "厦门"]


def gen_summarisation(rng: random.Random) -> list[dict]:
    rows = []
    for i in range(PER_TASK):
        n = rng.choice([80, 120, 150, 200, 250, 300, 400])
        if i % 2 == 0:
            org, (ev, hi), plan, city = (
                rng.choice(ORGS_EN),
                rng.choice(EVENTS_EN),
                rng.choice(PLANS_EN),
                rng.choice(CITIES_EN),
            )
            day = rng.choice(["Saturday", "Sunday"])
            text = (
                f"Last {day}, {org} in {city} held {ev}. About {n} people took part, more than the "
                f"organisers had expected. According to the organisers, {hi}. Volunteers helped with "
                f"registration and kept the event running smoothly. Because of the positive feedback, "
                f"{org} plans to {plan}."
            )
            q = rng.choice(["Summarise the following text in one sentence:\n\n", "Give a one-sentence summary:\n\n"])
            a = f"{org[0].upper() + org[1:]} in {city} held {ev} with about {n} participants and plans to {plan}."
        else:
            org, (ev, hi), plan, city = (
                rng.choice(ORGS_ZH),
                rng.choice(EVENTS_ZH),
                rng.choice(PLANS_ZH),
                rng.choice(CITIES_ZH),
            )
            text = (
                f"上周末，{city}{org}举办了{ev}。活动共吸引约{n}人参加，人数超出了主办方的预期。"
                f"据主办方介绍，{hi}。现场志愿者协助签到和引导，活动秩序井然。"
                f"由于反响热烈，{org}计划{plan}。"
            )
            q = rng.choice(["用一句话概括下面这段文字：\n\n", "请为以下内容写一句话摘要：\n\n"])
            a = f"{city}{org}举办{ev}，约{n}人参加，反响热烈，计划{plan}。"
        rows.append(chat(q + text, a))
    return rows


# ------------------------------------------------------------------- extraction
NAMES_ZH = ["张伟", "李娜", "王芳", "刘洋", "陈静", "杨磊", "赵敏", "黄涛"]
NAMES_EN = ["Alice Brown", "Tom Lee", "Maria Garcia", "James Wilson", "Priya Shah", "Kenji Sato", "Emma Clark"]
MONTHS_EN = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
EXTRACT_ZH = [
    "{a}和{b}于{d}在北京签署了合作协议。",
    "{d}，{a}向{b}提交了年度报告。",
    "{a}计划在{d}与{b}一起参加技术大会。",
    "据{a}介绍，{b}将于{d}正式入职。",
]
EXTRACT_EN = [
    "{a} and {b} signed the partnership agreement on {d}.",
    "On {d}, {a} sent the annual report to {b}.",
    "{a} will meet {b} at the conference on {d}.",
    "{a} said that {b} will join the team on {d}.",
]


def gen_extraction(rng: random.Random) -> list[dict]:
    rows = []
    for i in range(PER_TASK):
        y, m, d = rng.choice([2023, 2024, 2025]), rng.randint(1, 12), rng.randint(1, 28)
        if i % 2 == 0:
            a, b = rng.sample(NAMES_ZH, 2)
            date = f"{y}年{m}月{d}日"
            s = rng.choice(EXTRACT_ZH).format(a=a, b=b, d=date)
            rows.append(chat(f"从下面的句子中提取所有人名和日期：\n{s}", f"人名：{a}、{b}\n日期：{date}"))
        else:
            a, b = rng.sample(NAMES_EN, 2)
            date = f"{MONTHS_EN[m - 1]} {d}, {y}"
            s = rng.choice(EXTRACT_EN).format(a=a, b=b, d=date)
            rows.append(
                chat(
                    f"Extract all person names and dates from the sentence below:\n{s}",
                    f"Names: {a}, {b}\nDate: {date}",
                )
            )
    return rows


# ------------------------------------------------------------------- classification
REVIEWS = {
    "zh": {
        "正面": [
            "{p}质量很好，用了一个月都没出问题，推荐购买。",
            "物流很快，{p}和描述的一样，非常满意。",
            "{p}性价比很高，家里人都说好用。",
        ],
        "负面": [
            "{p}用了两天就坏了，客服也不回复，很失望。",
            "{p}和图片差别太大，做工粗糙，不推荐。",
            "等了十天才到货，{p}还有划痕，体验很差。",
        ],
        "中性": ["{p}已经收到，还没开始用，之后再来评价。", "{p}中规中矩，没有特别的优点，也没什么问题。"],
    },
    "en": {
        "positive": [
            "The {p} works perfectly and arrived early. Highly recommended!",
            "Great value for money, the {p} exceeded my expectations.",
            "I have used the {p} every day for a month and I love it.",
        ],
        "negative": [
            "The {p} stopped working after two days and support never replied.",
            "Cheap materials, the {p} looks nothing like the photos. Avoid.",
            "The {p} arrived scratched and a week late. Very disappointed.",
        ],
        "neutral": [
            "The {p} arrived today; I haven't tried it yet.",
            "The {p} is okay, nothing special but nothing wrong either.",
        ],
    },
}
PRODUCTS = {
    "zh": ["这款耳机", "这个电饭煲", "这双跑鞋", "这台台灯", "这个背包"],
    "en": ["headphones", "rice cooker", "running shoes", "desk lamp", "backpack"],
}


def gen_classification(rng: random.Random) -> list[dict]:
    rows = []
    seen: set[str] = set()
    for i in range(PER_TASK):
        lang = "zh" if i % 2 == 0 else "en"
        labels = list(REVIEWS[lang])
        label = labels[i // 2 % len(labels)]
        text = rng.choice(REVIEWS[lang][label]).format(p=rng.choice(PRODUCTS[lang]))
        while text in seen:
            text = rng.choice(REVIEWS[lang][label]).format(p=rng.choice(PRODUCTS[lang]))
        seen.add(text)
        if lang == "zh":
            q = f"判断下面这条商品评论的情感倾向（正面/负面/中性），只输出类别：\n{text}"
        else:
            q = f"Classify the sentiment of this review as positive, negative or neutral. Answer with one word.\n{text}"
        rows.append(chat(q, label))
    return rows


# ------------------------------------------------------------------- rewriting
REWRITE_ZH = [
    ("把报告", "发给我"),
    ("把会议纪要", "整理一下"),
    ("把合同", "再检查一遍"),
    ("把数据", "更新到表格里"),
    ("把方案", "改一下"),
    ("把发票", "寄过来"),
    ("把照片", "传到群里"),
    ("把周报", "交上来"),
    ("把地址", "告诉我"),
    ("把问题清单", "整理出来"),
]
REWRITE_EN = [
    ("send me", "the report"),
    ("fix", "the typo on the homepage"),
    ("book", "a meeting room for Monday"),
    ("update", "the spreadsheet"),
    ("call", "the supplier"),
    ("review", "my pull request"),
    ("share", "the slides"),
    ("check", "the invoice"),
    ("print", "the contract"),
    ("reply to", "the client"),
]


def gen_rewriting(rng: random.Random) -> list[dict]:
    rows = []
    for i in range(PER_TASK):
        if i % 2 == 0:
            obj, verb = REWRITE_ZH[i // 2]
            rude = f"{rng.choice(['马上', '赶紧', '立刻'])}{obj}{verb}。"
            polite = f"麻烦您方便的时候{obj}{verb}，谢谢！"
            rows.append(chat(f"把下面这句话改写得更礼貌一些：{rude}", polite))
        else:
            verb, obj = REWRITE_EN[i // 2]
            rude = f"{rng.choice(['', 'Just ', 'Now '])}{verb} {obj}{rng.choice(['.', ' now.', ' right now.'])}"
            rude = rude[0].upper() + rude[1:]
            polite = f"Could you please {verb} {obj} when you have a moment? Thank you!"
            rows.append(chat(f'Rewrite this sentence to sound more polite: "{rude}"', polite))
    return rows


# ------------------------------------------------------------------- math
def math_buy(rng: random.Random, zh: bool) -> tuple[str, str]:
    n, price, paid = rng.randint(3, 9), rng.randint(2, 12), 100
    cost, change = n * price, 100 - n * price
    if zh:
        q = f"小明买了{n}支笔，每支{price}元，他付了{paid}元，应该找回多少钱？"
        return q, f"总价：{n} × {price} = {cost} 元；找零：{paid} − {cost} = {change} 元。\n答案：{change} 元"
    q = f"Sam buys {n} notebooks at ${price} each and pays with a ${paid} bill. How much change does he get?"
    return q, f"Total cost: {n} × {price} = ${cost}. Change: {paid} − {cost} = ${change}.\nAnswer: ${change}"


def math_speed(rng: random.Random, zh: bool) -> tuple[str, str]:
    v, t = rng.choice([40, 50, 60, 75, 80, 90]), rng.randint(2, 6)
    if zh:
        q = f"一辆汽车以每小时{v}千米的速度行驶了{t}小时，一共行驶了多少千米？"
        return q, f"路程 = 速度 × 时间 = {v} × {t} = {v * t} 千米。\n答案：{v * t} 千米"
    q = f"A train travels at {v} km/h for {t} hours. How far does it go?"
    return q, f"Distance = speed × time = {v} × {t} = {v * t} km.\nAnswer: {v * t} km"


def math_discount(rng: random.Random, zh: bool) -> tuple[str, str]:
    price, off = rng.choice([80, 120, 200, 240, 360, 500]), rng.choice([10, 20, 25, 30])
    assert price * (100 - off) % 100 == 0  # sale price is a whole number
    final = price * (100 - off) // 100
    if zh:
        zhe = (100 - off) // 10 if off % 10 == 0 else (100 - off) / 10  # 8折, 7.5折
        q = f"一件外套原价{price}元，现在打{zhe}折，现价多少元？"
        return q, f"打折后价格 = {price} × {(100 - off) / 100:g} = {final} 元。\n答案：{final} 元"
    q = f"A jacket costs ${price}. It is on sale for {off}% off. What is the sale price?"
    a = (
        f"Discount: {price} × {off}% = ${price - final}. "
        f"Sale price: {price} − {price - final} = ${final}.\nAnswer: ${final}"
    )
    return q, a


def math_share(rng: random.Random, zh: bool) -> tuple[str, str]:
    k, each = rng.randint(3, 6), rng.randint(4, 12)
    total = k * each
    if zh:
        return f"老师把{total}颗糖平均分给{k}个小朋友，每人分到几颗？", f"{total} ÷ {k} = {each}。\n答案：每人{each}颗"
    q = f"{total} cookies are shared equally among {k} friends. How many does each friend get?"
    return q, f"{total} ÷ {k} = {each}.\nAnswer: {each} cookies"


def gen_math(rng: random.Random) -> list[dict]:
    kinds = [math_buy, math_speed, math_discount, math_share]
    return [chat(*kinds[i % 4](rng, (i // 4) % 2 == 0)) for i in range(PER_TASK)]


# ------------------------------------------------------------------- dialogue (multi-turn)
ROOMS = [("小会议室A", "Room A", 4), ("会议室B", "Room B", 8), ("大会议室C", "Room C", 20)]


def zh_time(h: int) -> str:
    return f"上午{h}点" if h < 12 else ("中午12点" if h == 12 else f"下午{h - 12}点")


def pick_room(people: int) -> tuple[str, str, int]:
    return next(r for r in ROOMS if r[2] >= people)


def gen_dialogue(rng: random.Random) -> list[dict]:
    rows = []
    for i in range(PER_TASK):
        people = rng.choice([2, 3, 5, 6, 8, 12, 15])
        hour = rng.choice([9, 10, 14, 15, 16])
        dur = rng.choice([1, 2])
        zh_room, en_room, cap = pick_room(people)
        if i % 2 == 0:
            day = rng.choice(["周一", "周二", "周三", "周四", "周五"])
            rows.append(
                chat(
                    "我想预订一个会议室。",
                    "好的！请问会议在哪天、几点开始，预计开多久？大概有多少人参加？",
                    f"{day}{zh_time(hour)}。",
                    "收到。会议预计开多久、有多少人参加呢？",
                    f"{dur}个小时，{people}个人。",
                    f"已为您预订{zh_room}（可容纳{cap}人），时间是{day}{zh_time(hour)}到{zh_time(hour + dur)}，"
                    f"共{people}人参会。需要我帮您发送会议邀请吗？",
                )
            )
        else:
            day = rng.choice(["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"])

            def fmt(h: int) -> str:
                return f"{h - 12 if h > 12 else h} {'pm' if h >= 12 else 'am'}"

            rows.append(
                chat(
                    "I need to book a meeting room.",
                    "Sure! What day and time should the meeting start, how long will it last, and how many people "
                    "will attend?",
                    f"{day} at {fmt(hour)}.",
                    "Got it. How long will it last, and how many people are coming?",
                    f"{dur} hour{'s' if dur > 1 else ''}, {people} people.",
                    f"Done: {en_room} (seats {cap}) is booked for {day} from {fmt(hour)} to {fmt(hour + dur)} "
                    f"for {people} people. Shall I send the calendar invitation?",
                )
            )
    return rows


# ------------------------------------------------------------------- json_output
ITEMS = [
    ("desk lamp", "台灯"),
    ("backpack", "双肩包"),
    ("kettle", "电水壶"),
    ("keyboard", "键盘"),
    ("umbrella", "雨伞"),
    ("water bottle", "水杯"),
    ("headphones", "耳机"),
]
COLORS = [("black", "黑色"), ("white", "白色"), ("blue", "蓝色"), ("red", "红色"), ("grey", "灰色")]


def gen_json_output(rng: random.Random) -> list[dict]:
    rows = []
    for i in range(PER_TASK):
        (en, zh), (cen, czh) = rng.choice(ITEMS), rng.choice(COLORS)
        price = rng.choice([19, 29, 49, 59, 99, 129, 199])
        stock = rng.choice([0, 3, 12, 40, 150])
        if i % 2 == 0:
            text = f"This {cen} {en} costs {price} dollars and there are {stock} left in stock."
            q = (
                "Extract the product information from the text as a JSON object with the keys "
                f'"name", "color", "price", "in_stock" (a number). Output only JSON.\n{text}'
            )
            obj = {"name": en, "color": cen, "price": price, "in_stock": stock}
        else:
            text = f"这款{czh}的{zh}售价{price}元，目前库存{stock}件。"
            q = (
                '请从下面的文字中提取商品信息，输出 JSON 对象，键为 "name"、"color"、"price"、"in_stock"'
                f"（数字）。只输出 JSON。\n{text}"
            )
            obj = {"name": zh, "color": czh, "price": price, "in_stock": stock}
        rows.append(chat(q, json.dumps(obj, ensure_ascii=False)))
    return rows


# ------------------------------------------------------------------- reasoning (CoT layout)
PEOPLE_ZH = ["小王", "小李", "小张", "小赵", "小陈"]
PEOPLE_EN = ["Anna", "Ben", "Chloe", "David", "Ella"]


def gen_reasoning(rng: random.Random) -> list[dict]:
    rows = []
    for i in range(PER_TASK):
        kind = i % 3
        zh = (i // 3) % 2 == 0
        if kind == 0:  # ages: x + (x + d) = s
            x, d = rng.randint(6, 30), rng.randint(2, 9)
            s = 2 * x + d
            a_, b_ = rng.sample(PEOPLE_ZH if zh else PEOPLE_EN, 2)
            if zh:
                q = f"{a_}比{b_}大{d}岁，两人年龄之和是{s}岁。{b_}今年几岁？"
                t = (
                    f"设{b_}的年龄为 x 岁，则{a_}为 x + {d} 岁。两人之和：x + (x + {d}) = {s}，"
                    f"即 2x = {s} − {d} = {s - d}，所以 x = {x}。验证：{x} + {x + d} = {s}，正确。"
                )
                ans = f"{b_}今年{x}岁。"
            else:
                q = f"{a_} is {d} years older than {b_}. Their ages add up to {s}. How old is {b_}?"
                t = (
                    f"Let {b_}'s age be x, so {a_} is x + {d}. Then x + (x + {d}) = {s}, so 2x = {s - d} "
                    f"and x = {x}. Check: {x} + {x + d} = {s}. Correct."
                )
                ans = f"{b_} is {x} years old."
        elif kind == 1:  # ordering of three heights
            names = rng.sample(PEOPLE_ZH if zh else PEOPLE_EN, 3)  # tallest -> shortest
            tall, mid, short = names
            facts = [(tall, mid), (mid, short)]
            rng.shuffle(facts)
            if zh:
                q = "，".join(f"{x}比{y}高" for x, y in facts) + "。三人中谁最矮？"
                t = (
                    f"由条件可知{tall}比{mid}高，{mid}又比{short}高，所以身高顺序为 {tall} > {mid} > {short}，"
                    f"最矮的是{short}。"
                )
                ans = f"{short}最矮。"
            else:
                q = ". ".join(f"{x} is taller than {y}" for x, y in facts) + ". Who is the shortest of the three?"
                t = (
                    f"{tall} is taller than {mid}, and {mid} is taller than {short}. So the order is "
                    f"{tall} > {mid} > {short}, and the shortest is {short}."
                )
                ans = f"{short} is the shortest."
        else:  # chickens and rabbits
            c, r = rng.randint(3, 20), rng.randint(2, 15)
            heads, legs = c + r, 2 * c + 4 * r
            if zh:
                q = f"笼子里有鸡和兔子共{heads}只，脚一共有{legs}只。鸡和兔子各有多少只？"
                t = (
                    f"假设全是鸡，则脚有 {heads} × 2 = {2 * heads} 只，比实际少 {legs} − {2 * heads} = "
                    f"{legs - 2 * heads} 只。每把一只鸡换成兔子多 2 只脚，所以兔子有 {legs - 2 * heads} ÷ 2 = {r} 只，"
                    f"鸡有 {heads} − {r} = {c} 只。验证：{c} × 2 + {r} × 4 = {legs}，正确。"
                )
                ans = f"鸡有{c}只，兔子有{r}只。"
            else:
                q = (
                    f"A farm has chickens and rabbits: {heads} heads and {legs} legs in total. "
                    "How many chickens and how many rabbits are there?"
                )
                t = (
                    f"If all {heads} animals were chickens there would be {2 * heads} legs, which is "
                    f"{legs - 2 * heads} fewer than {legs}. Each rabbit adds 2 legs, so there are "
                    f"{legs - 2 * heads} / 2 = {r} rabbits and {heads} - {r} = {c} chickens. "
                    f"Check: {c} × 2 + {r} × 4 = {legs}."
                )
                ans = f"There are {c} chickens and {r} rabbits."
        rows.append({"question": q, "thinking": t, "answer": ans})
    return rows


TASKS: dict[str, Callable[[random.Random], list]] = {
    "qa": gen_qa,
    "code": gen_code,
    "translation": gen_translation,
    "summarisation": gen_summarisation,
    "extraction": gen_extraction,
    "classification": gen_classification,
    "rewriting": gen_rewriting,
    "math": gen_math,
    "dialogue": gen_dialogue,
    "json_output": gen_json_output,
}


def split_rows(rows: list, rng: random.Random) -> tuple[list, list, list]:
    rows = list(rows)
    rng.shuffle(rows)
    return rows[N_VAL + N_TEST :], rows[:N_VAL], rows[N_VAL : N_VAL + N_TEST]


def write(name: str, rows: list[dict]) -> None:
    with open(HERE / name, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{name}: {len(rows)} rows")


def main() -> None:
    rng = random.Random(SEED)
    out: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for task, gen in TASKS.items():
        msgs = gen(rng)
        assert len(msgs) == PER_TASK, (task, len(msgs))
        assert len({json.dumps(m, ensure_ascii=False) for m in msgs}) == PER_TASK, f"duplicate rows in {task}"
        rows = [{"messages": m, "task": task} for m in msgs]
        for split, part in zip(("train", "val", "test"), split_rows(rows, rng), strict=True):
            out[split] += part
    for split, rows in out.items():
        rng.shuffle(rows)
        write(f"{split}.jsonl", rows)

    cot = [{**r, "task": "reasoning"} for r in gen_reasoning(rng)]
    assert len({r["question"] for r in cot}) == PER_TASK, "duplicate reasoning questions"
    tr, va, te = split_rows(cot, rng)
    write("cot.jsonl", tr)
    write("cot_val.jsonl", va)
    write("cot_test.jsonl", te)


if __name__ == "__main__":
    main()
