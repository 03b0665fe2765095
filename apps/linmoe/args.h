// A small command-line parser for the subcommands: --name value, --name=value, flags,
// repeatable options and positionals. Unknown flags and missing values are UserErrors that
// name the flag; --help prints the usage and the options.
#pragma once
#include <string>
#include <vector>

namespace linmoe {

class ArgParser {
 public:
  ArgParser(std::string command, std::string summary);
  // An option taking a value. `metavar` shows in the usage ("FILE").
  void option(const std::string& name, std::string* out, const std::string& metavar,
              const std::string& help, bool required = false);
  void option(const std::string& name, int* out, const std::string& metavar,
              const std::string& help, bool required = false);
  // A repeatable option (--set k=v --set k2=v2).
  void multi_option(const std::string& name, std::vector<std::string>* out,
                    const std::string& metavar, const std::string& help);
  void flag(const std::string& name, bool* out, const std::string& help);
  // One positional argument (in order).
  void positional(const std::string& metavar, std::string* out, const std::string& help,
                  bool required = true);
  // Short alias, e.g. alias("-c", "--config").
  void alias(const std::string& short_name, const std::string& name);

  // Parses argv[0..argc) (the words after the subcommand). Returns false when --help was asked
  // (usage already printed): the caller returns 0. Throws UserError on bad arguments.
  bool parse(int argc, char** argv);
  std::string usage() const;

 private:
  struct Opt {
    std::string name, metavar, help;
    enum Kind { text, integer, multi, boolean } kind;
    void* out;
    bool required;
    bool seen = false;
  };
  struct Pos {
    std::string metavar, help;
    std::string* out;
    bool required;
  };
  Opt* find(const std::string& name);
  std::string command_, summary_;
  std::vector<Opt> opts_;
  std::vector<Pos> positionals_;
  std::vector<std::pair<std::string, std::string>> aliases_;
};

}  // namespace linmoe
