// peftkit chat: a conversation in RWKV's "User: ...\n\nAssistant:" format. The state carries the
// conversation, so each turn reads only its new text; one message per line of stdin.
#include <ATen/ATen.h>
#include <unistd.h>

#include <iostream>

#include "cli/command.hpp"
#include "generate/generation.hpp"
#include "host/loaded_model.hpp"
#include "host/plugin_registry.hpp"
#include "peftkit/error.hpp"
#include "peftkit/tensor_io.hpp"
#include "tokenizer/world_tokenizer.hpp"

namespace peftkit::cli {
namespace fs = std::filesystem;

namespace {

constexpr const char* kChatHelp =
    "commands: /reset (start over), /save FILE, /load FILE (the conversation state), /quit";

// What a conversation has read so far: the model's state and the text behind it.
struct Conversation {
  model::ModelState state;
  std::string transcript;
};

// A conversation file: the state's tensors, the transcript, and the shape of the model it is for.
void save_conversation(const fs::path& path, const Conversation& c, const model::RwkvModel& model) {
  TensorMap out;
  for (size_t l = 0; l < c.state.wkv.size(); ++l) {
    out["chat." + std::to_string(l) + ".att_shift"] = c.state.att_shift[l].to(at::kCPU);
    out["chat." + std::to_string(l) + ".wkv"] = c.state.wkv[l].to(at::kCPU);
    out["chat." + std::to_string(l) + ".ffn_shift"] = c.state.ffn_shift[l].to(at::kCPU);
  }
  out["chat.transcript"] =
      at::tensor(std::vector<uint8_t>(c.transcript.begin(), c.transcript.end()), at::kByte);
  out["chat.model"] = at::tensor(
      std::vector<int64_t>{model.config().n_layer, model.config().n_embd, model.config().vocab});
  write_pth(path, out);
}

Conversation load_conversation(const fs::path& path, const model::RwkvModel& model) {
  const TensorMap in = read_pth(path, Checksums::kVerify);
  auto get = [&](const std::string& name) -> const at::Tensor& {
    auto it = in.find(name);
    if (it == in.end())
      throw Error(path.string() + ": not a conversation saved by peftkit chat (no '" + name + "')");
    return it->second;
  };
  const at::Tensor shape = get("chat.model").to(at::kLong);
  const std::vector<int64_t> expected{model.config().n_layer, model.config().n_embd,
                                      model.config().vocab};
  if (shape.numel() != 3 ||
      std::vector<int64_t>(shape.data_ptr<int64_t>(), shape.data_ptr<int64_t>() + 3) != expected)
    throw Error(path.string() + ": the conversation is of a model of another shape (this one: " +
                model.config().describe() + ")");
  Conversation c;
  c.state = model.initial_state(1);
  for (size_t l = 0; l < c.state.wkv.size(); ++l) {
    for (auto [kind, target] :
         {std::pair{"att_shift", &c.state.att_shift[l]}, std::pair{"wkv", &c.state.wkv[l]},
          std::pair{"ffn_shift", &c.state.ffn_shift[l]}}) {
      const at::Tensor& saved = get("chat." + std::to_string(l) + "." + kind);
      if (saved.sizes() != target->sizes())
        throw Error(path.string() + ": chat." + std::to_string(l) + "." + kind + " has shape " +
                    c10::str(saved.sizes()) + ", expected " + c10::str(target->sizes()));
      *target = saved.to(target->options());
    }
  }
  const at::Tensor text = get("chat.transcript").contiguous();
  c.transcript.assign(reinterpret_cast<const char*>(text.data_ptr<uint8_t>()),
                      static_cast<size_t>(text.numel()));
  return c;
}

// RWKV's chat format keeps a message on one paragraph: blank lines inside it would read as a turn.
std::string clean_message(std::string message) {
  for (size_t at; (at = message.find("\r\n")) != std::string::npos;) message.replace(at, 2, "\n");
  for (size_t at; (at = message.find("\n\n")) != std::string::npos;) message.replace(at, 2, "\n");
  const size_t first = message.find_first_not_of(" \t\n\r");
  if (first == std::string::npos) return "";
  return message.substr(first, message.find_last_not_of(" \t\n\r") - first + 1);
}

// Prints the streamed answer up to the blank line that ends it.
class AnswerPrinter {
 public:
  void operator()(const std::string& piece) {
    if (done_) return;
    held_ += piece;
    if (const size_t end = held_.find("\n\n"); end != std::string::npos) {
      std::cout << held_.substr(0, end) << std::flush;
      done_ = true;
      return;
    }
    // A trailing newline may be the first half of the blank line: hold it back.
    const size_t keep = held_.size() - (held_.back() == '\n' ? 1 : 0);
    std::cout << held_.substr(0, keep) << std::flush;
    held_.erase(0, keep);
  }
  void finish() {
    if (!done_) std::cout << held_;
    std::cout << "\n\n" << std::flush;
  }

 private:
  std::string held_;
  bool done_ = false;
};

}  // namespace

Command chat_command() {
  Command command;
  command.name = "chat";
  command.takes_adapters = true;
  command.usage =
      "peftkit chat --model FILE [--adapter PATH | --lora PATH | --state FILE]... [options]";
  command.summary =
      "multi-turn chat (User:/Assistant:) with the state carried between turns; reads stdin";
  command.describe = [](po::options_description& options, po::positional_options_description&) {
    options.add_options()(
        "transcript", po::value<std::string>(),
        "after every turn, write the whole conversation the model has read to this file");
    add_model_options(options, "fp32");
    add_sampling_options(options, 500, true);
  };
  command.run = [](const po::variables_map& vm, const CommonOptions& common) {
    const generate::GenerationSettings settings = generation_settings_from(vm);
    const auto registry =
        host::PluginRegistry::discover(host::plugin_search_path(common.plugin_dirs));
    host::LoadedModel loaded = load_model_from(vm, registry);
    model::RwkvModel& model = *loaded.model;
    auto tokenizer = tokenizer::WorldTokenizer::load(tokenizer::find_world_vocab());
    const bool terminal = ::isatty(STDIN_FILENO);
    const std::optional<fs::path> transcript_file =
        vm.count("transcript") ? std::optional<fs::path>(vm["transcript"].as<std::string>())
                               : std::nullopt;
    Conversation conversation{model.initial_state(1), ""};
    if (terminal) std::cerr << kChatHelp << "\n";
    int64_t turn = 0;
    for (std::string line;;) {
      if (terminal) std::cout << "User: " << std::flush;
      if (!std::getline(std::cin, line)) break;
      const std::string message = clean_message(line);
      if (message.empty()) continue;
      if (message[0] == '/') {
        const size_t space = message.find(' ');
        const std::string name = message.substr(0, space);
        const std::string argument =
            space == std::string::npos ? "" : clean_message(message.substr(space + 1));
        try {
          if (name == "/quit") break;
          if (name == "/reset") {
            conversation = {model.initial_state(1), ""};
            std::cerr << "(conversation reset)\n";
          } else if ((name == "/save" || name == "/load") && argument.empty()) {
            throw Error(name + ": name a file, e.g. " + name + " chat.pth");
          } else if (name == "/save") {
            save_conversation(argument, conversation, model);
            std::cerr << "(saved to " << argument << ")\n";
          } else if (name == "/load") {
            conversation = load_conversation(argument, model);
            std::cerr << "(loaded " << argument << ")\n";
          } else {
            throw Error("unknown command " + name + "; " + kChatHelp);
          }
        } catch (const Error& e) {
          // A failed command leaves the conversation as it was; the chat goes on.
          std::cerr << "error: " << e.what() << "\n";
        }
        continue;
      }
      // The previous answer ends with its blank line; one cut short gets it here.
      const std::string& read = conversation.transcript;
      const bool at_turn_start =
          read.empty() || (read.size() >= 2 && read.compare(read.size() - 2, 2, "\n\n") == 0);
      std::string prompt = at_turn_start ? "" : "\n\n";
      prompt += "User: " + message + "\n\nAssistant:";
      std::cout << "Assistant:" << std::flush;
      AnswerPrinter printer;
      generate::GenerationSettings turn_settings = settings;
      turn_settings.seed = settings.seed + static_cast<uint64_t>(turn++);
      const std::string answer =
          generate::continue_text(model, *tokenizer, conversation.state, tokenizer->encode(prompt),
                                  turn_settings, std::ref(printer));
      printer.finish();
      conversation.transcript += prompt + answer;
      if (transcript_file) write_text_file(*transcript_file, conversation.transcript);
    }
    return 0;
  };
  return command;
}

}  // namespace peftkit::cli
