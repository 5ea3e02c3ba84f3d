"""Generate the news_cls example: Chinese news classification, fudan-news layout.

Each row: {"text": <2-4 sentence synthetic news snippet>,
           "category": "[\"体育\", \"经济\", ...]"  (JSON list serialised as a string:
                                                      the true label + 2-4 distractors, shuffled),
           "output": <true label>}

300 snippets = 6 categories x 50, composed from per-category sentence templates
and vocabulary tables (all invented here). Stratified split 200/40/60.

Run:  python examples/news_cls/gen_data.py   (deterministic)
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

SEED = 7
HERE = Path(__file__).resolve().parent
PER_CATEGORY = 50
SPLIT = {"val": (7, 7, 7, 7, 6, 6), "test": (10, 10, 10, 10, 10, 10)}  # rest -> train

CITIES = ["北京", "上海", "广州", "成都", "武汉", "杭州", "西安", "南京", "重庆", "青岛", "昆明", "沈阳"]
MONTHS = [f"{m}月{d}日" for m in range(1, 13) for d in (3, 9, 16, 22, 28)]

# Category -> slot vocab and sentence templates. "{city}" and "{date}" are shared slots.
CATS: dict[str, dict] = {
    "体育": {
        "slots": {
            "team": ["星河队", "海鸥队", "雄鹰队", "长江队", "猎豹队", "山城队", "蓝鲸队", "赤焰队"],
            "player": ["王浩然", "李思远", "陈子墨", "刘一帆", "赵天宇", "周欣怡", "吴佳琪", "孙雨桐"],
            "event": ["足球超级联赛", "排球联赛", "乒乓球团体赛", "羽毛球团体赛", "冰球联赛", "手球联赛"],
            "score": ["3比1", "2比0", "3比2", "2比1", "3比0"],
            "coach": ["主教练", "助理教练", "领队"],
        },
        "templates": [
            "{date}，{event}在{city}继续进行，{team}以{score}战胜对手，取得三连胜。",
            "{team}核心球员{player}全场表现出色，多次在关键时刻得分。",
            "赛后{team}{coach}表示，球队的防守还有提升空间，下一场将全力以赴。",
            "本赛季{player}场均贡献全队最高得分，被评为本月最佳球员。",
            "{event}{city}站吸引了上万名观众到场观赛，现场气氛十分热烈。",
            "{player}在本场比赛中创造了个人职业生涯新高，并入选了国家集训队名单。",
            "目前{team}在积分榜上排名第二，距离榜首仅差两个积分。",
            "由于伤病，{team}多名主力缺席了本轮比赛，替补球员获得了更多上场时间。",
        ],
    },
    "经济": {
        "slots": {
            "company": ["华信集团", "远航物流", "丰源食品", "恒泰地产", "鼎盛银行", "新能汽车", "金穗农业"],
            "indicator": ["营业收入", "净利润", "海外销售额"],
            "city_ind": ["社会消费品零售总额", "固定资产投资", "外贸出口额", "地区生产总值"],
            "pct": ["3.2%", "5.8%", "7.1%", "12.4%", "1.9%", "9.6%"],
            "stock_pct": ["2.3%", "4.5%", "6.8%", "9.97%"],
            "industry": ["新能源汽车", "跨境电商", "现代农业", "高端制造", "文旅消费", "物流"],
            "period": ["前三季度", "上半年", "一季度", "去年全年", "上个月"],
        },
        "templates": [
            "{date}，{company}发布财报，{period}{indicator}同比增长{pct}。",
            "{city}统计局数据显示，{period}全市{city_ind}同比增长{pct}，经济运行总体平稳。",
            "分析人士认为，{industry}行业需求回暖，是带动增长的主要因素。",
            "{company}表示，将继续加大在{industry}领域的投资，扩大产能。",
            "受市场利率下调影响，{period}企业融资成本有所下降，投资意愿增强。",
            "今年以来，{city}出台多项措施扶持中小企业，减税降费规模持续扩大。",
            "业内专家提醒，外部需求仍存在不确定性，企业应注意控制经营风险。",
            "消息公布后，{company}股价当日上涨{stock_pct}，成交量明显放大。",
        ],
    },
    "计算机": {
        "slots": {
            "company": ["云图科技", "深算信息", "星链软件", "智核半导体", "蓝海数据", "极光网络"],
            "tech": ["大语言模型", "云计算平台", "开源数据库", "操作系统", "芯片", "编程语言编译器"],
            "product": ["新一代处理器", "开发者工具包", "智能助手", "分布式存储系统", "网络安全网关"],
            "metric": ["30%", "两倍", "40%", "一倍", "25%"],
        },
        "templates": [
            "{date}，{company}在{city}举行发布会，正式推出{product}。",
            "据介绍，新产品基于自研{tech}，运行速度比上一代提升{metric}。",
            "{company}研发负责人表示，团队在{tech}的能耗优化上取得了突破。",
            "该{tech}已在多家高校和企业开展测试，开发者可以免费申请试用。",
            "专家指出，数据安全和隐私保护仍是{tech}大规模应用需要解决的问题。",
            "此次更新修复了多个安全漏洞，并新增了对多种编程语言的支持。",
            "{company}同时宣布开放部分源代码，鼓励社区参与{product}的开发。",
            "业内人士认为，{product}的推出将降低中小企业使用{tech}的门槛。",
        ],
    },
    "政治": {
        "slots": {
            "org": ["市人民代表大会", "省政府", "国务院有关部门", "市政协", "外交部"],
            "policy": ["城乡居民医疗保障", "基层治理", "营商环境优化", "住房保障", "养老服务体系"],
            "meeting": ["常务会议", "全体会议", "专题座谈会", "工作会议"],
            "country": ["邻国", "多个东盟国家", "欧洲多国", "非洲国家", "拉美国家"],
        },
        "templates": [
            "{date}，{org}召开{meeting}，审议通过了关于{policy}的实施意见。",
            "会议强调，要坚持以人民为中心，切实解决群众急难愁盼问题。",
            "{org}负责人表示，将进一步完善{policy}相关法规，加强监督检查。",
            "新闻发言人在例行记者会上表示，我国愿同{country}加强对话与合作。",
            "代表们围绕{policy}等议题积极建言献策，提出议案和建议百余件。",
            "{city}将在年内开展{policy}专项督查，对落实不力的单位严肃问责。",
            "双方领导人就双边关系及共同关心的国际和地区问题交换了意见。",
            "文件明确了{policy}的时间表和路线图，要求各地结合实际抓好落实。",
        ],
    },
    "环境": {
        "slots": {
            "pollutant": ["PM2.5", "二氧化硫", "化学需氧量", "氮氧化物", "臭氧"],
            "region": ["长江流域", "黄河沿岸", "太湖", "京津冀地区", "西南山区", "沿海湿地"],
            "species": ["江豚", "白鹭", "中华秋沙鸭", "黑颈鹤", "红树林"],
            "pct": ["8%", "12%", "15%", "6.5%", "20%"],
        },
        "templates": [
            "{date}，生态环境部门通报，{city}{pollutant}平均浓度同比下降{pct}。",
            "近年来，{region}持续推进生态修复，水质优良比例稳步提高。",
            "监测人员在{region}再次发现{species}的踪迹，种群数量明显回升。",
            "{city}计划在三年内完成老旧工业园区的污水管网改造，减少污染物排放。",
            "专家表示，应对气候变化需要加快能源结构调整，扩大清洁能源使用。",
            "当地志愿者定期开展河道清理活动，今年已清理垃圾数十吨。",
            "新修订的环境保护条例将于下月施行，对违法排污行为加大处罚力度。",
            "{region}已建成多个自然保护区，为{species}等珍稀物种提供栖息地。",
        ],
    },
    "艺术": {
        "slots": {
            "artist": ["林墨", "沈清秋", "许知远", "顾青", "苏晚", "韩冬"],
            "artform": ["油画", "水墨画", "当代雕塑", "摄影", "书法", "版画"],
            "venue": ["市美术馆", "国家大剧院", "城市艺术中心", "当代艺术博物馆", "音乐厅"],
            "work": ["《山河入梦》", "《归途》", "《城市之光》", "《青绿》", "《远方来信》", "《春望》"],
            "show": ["话剧", "交响音乐会", "舞剧", "昆曲演出", "歌剧"],
        },
        "templates": [
            "{date}，艺术家{artist}的{artform}个展在{city}{venue}开幕。",
            "展览共展出作品八十余件，其中代表作{work}首次与公众见面。",
            "{artist}说，这组作品的灵感来自童年记忆中的故乡风景。",
            "原创{show}{work}在{venue}首演，演出结束后观众掌声经久不息。",
            "评论家认为，{artist}在传统{artform}语言中融入了现代审美。",
            "本次展览将持续到下个月底，市民可以通过线上平台免费预约参观。",
            "该{show}由青年导演执导，融合了传统戏曲和现代舞台技术。",
            "主办方还将举办多场讲座和工作坊，邀请观众亲身体验{artform}创作。",
        ],
    },
}
LABELS = list(CATS)


def fill(tmpl: str, slots: dict[str, list[str]], chosen: dict[str, str], rng: random.Random) -> str:
    """Fill a template; a slot keeps one value across the whole snippet."""
    keys = [f for _, f, _, _ in string.Formatter().parse(tmpl) if f]
    for k in keys:
        if k not in chosen:
            if k == "city":
                chosen[k] = rng.choice(CITIES)
            elif k == "date":
                chosen[k] = rng.choice(MONTHS)
            else:
                chosen[k] = rng.choice(slots[k])
    return tmpl.format(**chosen)


def make_snippet(label: str, rng: random.Random) -> str:
    spec = CATS[label]
    n = rng.choice([2, 3, 3, 4])
    first = spec["templates"][0] if rng.random() < 0.5 else None
    rest = [t for t in spec["templates"] if t != first]
    picked = ([first] if first else []) + rng.sample(rest, n - (1 if first else 0))
    chosen: dict[str, str] = {}
    return "".join(fill(t, spec["slots"], chosen, rng) for t in picked)


def make_candidates(label: str, rng: random.Random) -> str:
    distractors = rng.sample([x for x in LABELS if x != label], rng.randint(2, 4))
    cands = [label, *distractors]
    rng.shuffle(cands)
    return json.dumps(cands, ensure_ascii=False)


def main() -> None:
    rng = random.Random(SEED)
    splits: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for ci, label in enumerate(LABELS):
        texts: list[str] = []
        seen: set[str] = set()
        while len(texts) < PER_CATEGORY:
            t = make_snippet(label, rng)
            if t not in seen:
                seen.add(t)
                texts.append(t)
        rows = [{"text": t, "category": make_candidates(label, rng), "output": label} for t in texts]
        n_val, n_test = SPLIT["val"][ci], SPLIT["test"][ci]
        splits["val"] += rows[:n_val]
        splits["test"] += rows[n_val : n_val + n_test]
        splits["train"] += rows[n_val + n_test :]
    for name, rows in splits.items():
        rng.shuffle(rows)
        with open(HERE / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(f"{name}: {len(rows)} rows")


if __name__ == "__main__":
    main()
