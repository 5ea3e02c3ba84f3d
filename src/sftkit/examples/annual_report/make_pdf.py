"""Write docs/lanhai_logistics_2023.pdf, the example's one PDF filing (already committed;
run this only to change it): three pages with a running header and a page-number footer,
so that ``sft data extract`` has real page furniture to remove.

Needs fpdf2 (``pip install fpdf2``) and a CJK TrueType font on this machine (WenQuanYi Zen Hei
or Noto Sans CJK from the distribution's font packages; ``--font PATH`` to name another). The
font is embedded as a subset, so the PDF reads the same everywhere. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
FONTS = [
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
]
HEADER = "蓝海供应链物流股份有限公司 2023年年度报告摘要"
PAGES = [
    ("一、重要提示", [
        "本报告为 sftkit 示例而虚构，公司名称与全部数据均不真实，不构成任何投资建议。",
        "蓝海供应链物流股份有限公司（以下简称“蓝海物流”）是一家综合性供应链物流服务商，总部位于上海市浦东新区，"
        "业务涵盖合同物流、国际货运代理和冷链物流三大板块，在全国运营仓储面积386万平方米。",
        "二、主要财务数据",
        "2023年，公司实现营业收入212.47亿元，同比增长6.8%；归属于上市公司股东的净利润5.63亿元，同比下降4.1%；"
        "净利润下降的主要原因是国际海运价格回落导致国际货代业务毛利收窄。",
        "报告期末，公司总资产为186.35亿元，资产负债率为52.4%；经营活动产生的现金流量净额为15.08亿元，同比增长9.7%。",
    ]),
    ("三、分业务经营情况", [
        "合同物流业务实现收入98.30亿元，占营业收入的46.3%，同比增长12.5%，主要服务汽车、消费电子和快消品客户，"
        "新签年化合同金额21.4亿元。",
        "国际货运代理业务实现收入71.25亿元，同比下降5.2%；全年完成海运集装箱量148万标准箱，同比增长3.9%，"
        "但单箱收入随运价回落而下降。",
        "冷链物流业务实现收入42.92亿元，同比增长17.6%，是增长最快的板块；冷库容量达到96万立方米，"
        "冷链车队规模为1,820辆。",
        "报告期内公司资本开支为12.60亿元，主要用于成都、武汉两地冷链园区和自动化仓库建设。",
    ]),
    ("四、风险因素", [
        "运价波动风险：国际海运和空运价格受供需关系影响波动较大，将直接影响国际货代业务的收入和毛利。",
        "燃油成本风险：燃油费用约占公司运输成本的28%，油价上涨将增加经营成本。",
        "汇率风险：国际业务以美元结算为主，人民币汇率波动可能产生汇兑损失，报告期内汇兑损失为0.37亿元。",
        "五、利润分配预案",
        "公司拟向全体股东每10股派发现金红利1.80元（含税），合计派发1.69亿元，占归母净利润的30.0%。",
    ]),
]


def find_font(given: str | None) -> Path:
    for candidate in [given, *FONTS]:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise SystemExit("no CJK font found: install fonts-wqy-zenhei (Debian/Ubuntu) or pass --font PATH")


def build(font: Path, out: Path) -> None:
    from fpdf import FPDF

    class Report(FPDF):
        def header(self) -> None:
            self.set_font("cjk", size=9)
            self.cell(0, 8, HEADER, align="C", new_x="LMARGIN", new_y="NEXT")
            self.ln(4)

        def footer(self) -> None:
            self.set_y(-15)
            self.set_font("cjk", size=9)
            self.cell(0, 8, f"第 {self.page_no()} 页 共 {len(PAGES)} 页", align="C")

    pdf = Report(format="A4")
    pdf.set_creation_date(datetime(2024, 3, 28, tzinfo=UTC))  # fixed: the same input gives the same bytes
    pdf.add_font("cjk", fname=str(font))
    for title, paragraphs in PAGES:
        pdf.add_page()
        pdf.set_font("cjk", size=14)
        pdf.cell(0, 10, title, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("cjk", size=11)
        for par in paragraphs:
            pdf.multi_cell(0, 7, par, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(3)
    pdf.output(str(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--font", help="a TrueType/OpenType font with Chinese characters")
    ap.add_argument("--out", default=str(HERE / "docs" / "lanhai_logistics_2023.pdf"))
    args = ap.parse_args()
    build(find_font(args.font), Path(args.out))
    print(args.out)


if __name__ == "__main__":
    main()
