#include "apps/linmoe/args.h"

#include <cstdio>
#include <sstream>

#include "core/check.h"

namespace linmoe {

ArgParser::ArgParser(std::string command, std::string summary)
    : command_(std::move(command)), summary_(std::move(summary)) {}

void ArgParser::option(const std::string& name, std::string* out, const std::string& metavar,
                       const std::string& help, bool required) {
  opts_.push_back({name, metavar, help, Opt::text, out, required});
}
void ArgParser::option(const std::string& name, int* out, const std::string& metavar,
                       const std::string& help, bool required) {
  opts_.push_back({name, metavar, help, Opt::integer, out, required});
}
void ArgParser::multi_option(const std::string& name, std::vector<std::string>* out,
                             const std::string& metavar, const std::string& help) {
  opts_.push_back({name, metavar, help, Opt::multi, out, false});
}
void ArgParser::flag(const std::string& name, bool* out, const std::string& help) {
  opts_.push_back({name, "", help, Opt::boolean, out, false});
}
void ArgParser::positional(const std::string& metavar, std::string* out, const std::string& help,
                           bool required) {
  positionals_.push_back({metavar, help, out, required});
}
void ArgParser::alias(const std::string& short_name, const std::string& name) {
  aliases_.emplace_back(short_name, name);
}

ArgParser::Opt* ArgParser::find(const std::string& name) {
  std::string n = name;
  for (auto& [s, l] : aliases_) {
    if (s == name) n = l;
  }
  for (Opt& o : opts_) {
    if (o.name == n) return &o;
  }
  return nullptr;
}

std::string ArgParser::usage() const {
  std::ostringstream os;
  os << "usage: " << command_;
  for (const Opt& o : opts_) {
    if (o.required) os << " " << o.name << " " << o.metavar;
  }
  if (!opts_.empty()) os << " [options]";
  for (const Pos& p : positionals_)
    os << (p.required ? " " : " [") << p.metavar << (p.required ? "" : "]");
  os << "\n\n" << summary_ << "\n";
  if (!positionals_.empty()) {
    os << "\narguments:\n";
    for (const Pos& p : positionals_) {
      std::string left = "  " + p.metavar;
      os << left << std::string(left.size() < 28 ? 28 - left.size() : 1, ' ') << p.help << "\n";
    }
  }
  os << "\noptions:\n";
  for (const Opt& o : opts_) {
    std::string left = "  " + o.name;
    for (auto& [s, l] : aliases_) {
      if (l == o.name) left = "  " + s + ", " + o.name;
    }
    if (!o.metavar.empty()) left += " " + o.metavar;
    os << left << std::string(left.size() < 28 ? 28 - left.size() : 1, ' ') << o.help
       << (o.required ? " (required)" : "") << (o.kind == Opt::multi ? " (repeatable)" : "")
       << "\n";
  }
  os << "  -h, --help                print this help\n";
  return os.str();
}

bool ArgParser::parse(int argc, char** argv) {
  std::size_t next_pos = 0;
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      std::fputs(usage().c_str(), stdout);
      return false;
    }
    if (a.size() > 1 && a[0] == '-') {
      std::string name = a, value;
      bool has_value = false;
      auto eq = a.find('=');
      if (a.rfind("--", 0) == 0 && eq != std::string::npos) {
        name = a.substr(0, eq);
        value = a.substr(eq + 1);
        has_value = true;
      }
      Opt* o = find(name);
      if (!o) {
        throw UserError(
            str_cat(command_, ": unknown option '", name, "' (see ", command_, " --help)"));
      }
      if (o->kind == Opt::boolean) {
        if (has_value) throw UserError(str_cat(command_, ": ", name, " takes no value"));
        *static_cast<bool*>(o->out) = true;
        o->seen = true;
        continue;
      }
      if (!has_value) {
        if (i + 1 >= argc) {
          throw UserError(str_cat(command_, ": ", name, " needs a value (", o->metavar, ")"));
        }
        value = argv[++i];
      }
      o->seen = true;
      if (o->kind == Opt::text) {
        *static_cast<std::string*>(o->out) = value;
      } else if (o->kind == Opt::multi) {
        static_cast<std::vector<std::string>*>(o->out)->push_back(value);
      } else {
        try {
          std::size_t used = 0;
          int v = std::stoi(value, &used);
          if (used != value.size()) throw std::invalid_argument("trailing");
          *static_cast<int*>(o->out) = v;
        } catch (const std::exception&) {
          throw UserError(str_cat(command_, ": ", name, " = '", value, "': not an integer"));
        }
      }
      continue;
    }
    if (next_pos >= positionals_.size()) {
      throw UserError(
          str_cat(command_, ": unexpected argument '", a, "' (see ", command_, " --help)"));
    }
    *positionals_[next_pos++].out = a;
  }
  for (const Opt& o : opts_) {
    if (o.required && !o.seen) {
      throw UserError(
          str_cat(command_, ": missing ", o.name, " ", o.metavar, " (see ", command_, " --help)"));
    }
  }
  for (std::size_t p = next_pos; p < positionals_.size(); ++p) {
    if (positionals_[p].required) {
      throw UserError(
          str_cat(command_, ": missing ", positionals_[p].metavar, " (see ", command_, " --help)"));
    }
  }
  return true;
}

}  // namespace linmoe
