// peftkit launch --nproc N [--nnodes M --node-rank K --master-addr H --master-port P] -- COMMAND...
#include "cli/command.hpp"
#include "dist/launcher.hpp"
#include "peftkit/error.hpp"

namespace peftkit::cli {

Command launch_command() {
  Command command;
  command.name = "launch";
  command.usage =
      "peftkit launch --nproc N [--nnodes M --node-rank K --master-addr HOST --master-port PORT] "
      "-- train RECIPE [options]";
  command.summary = "run a command as N data-parallel processes on this host (one per GPU)";
  command.describe = [](po::options_description& options,
                        po::positional_options_description& positionals) {
    options.add_options()("nproc", po::value<int>()->required(),
                          "processes on this host, one per GPU")(
        "nnodes", po::value<int>()->default_value(1), "hosts taking part")(
        "node-rank", po::value<int>()->default_value(0),
        "this host's index, 0 on the host of --master-addr")(
        "master-addr", po::value<std::string>()->default_value("127.0.0.1"),
        "node 0's host name or address, reachable from every host")(
        "master-port", po::value<int>()->default_value(29500), "a free port on node 0")(
        "grace", po::value<int>()->default_value(60),
        "seconds the others get to stop after one process fails, before they are killed")(
        "command", po::value<std::vector<std::string>>()->required(),
        "the peftkit command each process runs, after --");
    positionals.add("command", -1);
  };
  command.run = [](const po::variables_map& vm, const CommonOptions& common) {
    dist::LaunchPlan plan;
    plan.nproc = vm["nproc"].as<int>();
    plan.nnodes = vm["nnodes"].as<int>();
    plan.node_rank = vm["node-rank"].as<int>();
    plan.master_addr = vm["master-addr"].as<std::string>();
    plan.master_port = vm["master-port"].as<int>();
    if (vm["grace"].as<int>() < 0) throw Error("--grace: expected seconds >= 0");
    plan.grace = std::chrono::seconds(vm["grace"].as<int>());
    std::vector<std::string> arguments = vm["command"].as<std::vector<std::string>>();
    if (arguments.front() == "launch") throw Error("launch: the command to run cannot be launch");
    // The children find the same plugins as this process.
    for (const auto& dir : common.plugin_dirs) {
      arguments.push_back("--plugin-dir");
      arguments.push_back(dir.string());
    }
    return dist::launch(plan, dist::own_program(), arguments);
  };
  return command;
}

}  // namespace peftkit::cli
