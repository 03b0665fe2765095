#include <catch2/catch.hpp>

#include "apps/linmoe/args.h"
#include "core/check.h"

using namespace linmoe;

namespace {
struct Argv {
  std::vector<std::string> words;
  std::vector<char*> ptrs;
  explicit Argv(std::vector<std::string> w) : words(std::move(w)) {
    for (auto& s : words) ptrs.push_back(s.data());
  }
  int argc() { return static_cast<int>(ptrs.size()); }
  char** argv() { return ptrs.data(); }
};
std::string parse_error(std::vector<std::string> words) {
  std::string c, pos;
  int n = 0;
  std::vector<std::string> sets;
  ArgParser p("linmoe x", "test");
  p.option("--config", &c, "FILE", "config", true);
  p.alias("-c", "--config");
  p.option("--n", &n, "N", "a number");
  p.multi_option("--set", &sets, "K=V", "override");
  p.positional("PREFIX", &pos, "a prefix", false);
  Argv a(std::move(words));
  try {
    p.parse(a.argc(), a.argv());
  } catch (const UserError& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST_CASE("args: options, aliases, repeats, positionals", "[args]") {
  std::string c, pos;
  int n = 0;
  bool f = false;
  std::vector<std::string> sets;
  ArgParser p("linmoe x", "test");
  p.option("--config", &c, "FILE", "config", true);
  p.alias("-c", "--config");
  p.option("--n", &n, "N", "a number");
  p.flag("--flag", &f, "a flag");
  p.multi_option("--set", &sets, "K=V", "override");
  p.positional("PREFIX", &pos, "a prefix");
  Argv a({"-c", "x.yaml", "--n=5", "--set", "a=1", "--set=b=2", "--flag", "data/p"});
  REQUIRE(p.parse(a.argc(), a.argv()));
  CHECK(c == "x.yaml");
  CHECK(n == 5);
  CHECK(f);
  CHECK(sets == std::vector<std::string>{"a=1", "b=2"});
  CHECK(pos == "data/p");
  CHECK(p.usage().find("--config FILE") != std::string::npos);
}

TEST_CASE("args: bad command lines are one clear error", "[args]") {
  CHECK(parse_error({"--config"}) == "linmoe x: --config needs a value (FILE)");
  CHECK(parse_error({"-c", "a", "--bogus"}) ==
        "linmoe x: unknown option '--bogus' (see linmoe x --help)");
  CHECK(parse_error({}) == "linmoe x: missing --config FILE (see linmoe x --help)");
  CHECK(parse_error({"-c", "a", "--n", "x"}) == "linmoe x: --n = 'x': not an integer");
  CHECK(parse_error({"-c", "a", "p1", "p2"}) ==
        "linmoe x: unexpected argument 'p2' (see linmoe x --help)");
  CHECK(parse_error({"-c", "a"}).empty());
}
