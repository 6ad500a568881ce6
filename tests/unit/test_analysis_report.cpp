// The shared report helpers: escaping, JSON embedding, charts, pages, atomic writes.
#include "common.hpp"
#include "mlxterp/report.hpp"

using namespace mlxterp;
using namespace mlxterp::test;

namespace {

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

TEST(AnalysisReport, EscapingAndJson) {
  EXPECT_EQ(report::html_escape("<a href=\"x\">&'</a>"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;");
  EXPECT_EQ(report::token_html(" the"), "\u2423the");
  EXPECT_EQ(report::token_html("a\nb"), "a\u23CEb");
  EXPECT_EQ(report::token_html("<s>"), "&lt;s&gt;");
  // A token such as "</script>" must not end the data block early.
  std::string s = report::json_for_script({{"tok", "</script><script>alert(1)</script>"}, {"c", "<!--"}});
  EXPECT_EQ(s.find("</"), std::string::npos) << s;
  EXPECT_EQ(s.find("<!"), std::string::npos) << s;
  EXPECT_EQ(nlohmann::json::parse(s)["tok"], "</script><script>alert(1)</script>");
  // Invalid UTF-8 in a token (byte-fallback pieces) does not throw.
  EXPECT_NO_THROW(report::json_for_script({{"t", std::string("\xff\xfe")}}));
  EXPECT_EQ(report::fmt(std::nan(""), "%.2f"), "nan");
  EXPECT_EQ(report::finite_or_null(INFINITY), nullptr);
  EXPECT_EQ(report::tensor_json(at::tensor({1.5, NAN})).dump(), "[1.5,null]");
  EXPECT_EQ(report::tensor_json(at::ones({2, 1})).dump(), "[[1.0],[1.0]]");
}

TEST(AnalysisReport, ChartsDrawEveryCell) {
  report::Heatmap h;
  h.values = report::Matrix::from(at::arange(6, at::kDouble).view({2, 3}));
  h.row_labels = {"L0", "L1"};
  h.col_labels = {"a", "<b>", "c"};
  h.tooltips = {{"t00", "t01", "t02"}, {"t10", "t11", "t12"}};
  std::string svg = report::heatmap_svg(h);
  EXPECT_EQ(count(svg, "<title>"), 6u);
  EXPECT_NE(svg.find("t12"), std::string::npos);
  EXPECT_NE(svg.find("&lt;b&gt;"), std::string::npos);
  EXPECT_EQ(svg.find("<b>"), std::string::npos);
  h.row_labels = {"only one"};
  EXPECT_THROW(report::heatmap_svg(h), Error);
  EXPECT_EQ(report::diverging(0).css(), "rgb(255,255,255)");
  EXPECT_EQ(report::diverging(1).css(), "rgb(33,102,172)");
  EXPECT_EQ(report::diverging(-1).css(), "rgb(178,24,43)");
  report::BarChart b;
  b.labels = {"x", "y"};
  b.values = {1, -2};
  std::string bar = report::bar_chart_svg(b);
  EXPECT_EQ(count(bar, "<rect"), 2u);
  b.values = {1};
  EXPECT_THROW(report::bar_chart_svg(b), Error);
  report::LineChart lc;
  lc.series = {{"loss", {0, 1, 2}, {3, 2, 1}, "", false}};
  EXPECT_NE(report::line_chart_svg(lc).find("<polyline"), std::string::npos);
  lc.series[0].y.pop_back();
  EXPECT_THROW(report::line_chart_svg(lc), Error);
}

TEST(AnalysisReport, PagesAreSelfContainedAndWrittenAtomically) {
  TempDir tmp;
  report::Page p("Title & more");
  p.heading("Section").paragraph("1 < 2").data("d", {{"x", 1}}).script("document.body.dataset.ok = '1';");
  p.table({{"a", "b"}, {{"1", "<2>"}}});
  std::string html = p.render();
  EXPECT_NE(html.find("<title>Title &amp; more</title>"), std::string::npos);
  EXPECT_NE(html.find("Content-Security-Policy"), std::string::npos);
  EXPECT_NE(html.find("default-src 'none'"), std::string::npos);
  EXPECT_NE(html.find("1 &lt; 2"), std::string::npos);
  EXPECT_NE(html.find("&lt;2&gt;"), std::string::npos);
  for (const char* external : {"http://", "https://", "src=\"//", "<link"}) EXPECT_EQ(html.find(external), std::string::npos) << external;
  p.save(tmp.file("p.html"));
  EXPECT_EQ(read_file(tmp.file("p.html")), html);
  report::write_json(tmp.file("x.json"), {{"a", 1}});
  EXPECT_EQ(nlohmann::json::parse(read_file(tmp.file("x.json")))["a"], 1);
  EXPECT_THROW(p.save("/nonexistent-dir/p.html"), Error);
}

}  // namespace
