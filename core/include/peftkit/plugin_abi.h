/*
 * plugin_abi.h: the frozen C handshake every peftkit plugin exports.
 *
 * The host reads this plain C struct before it calls any C++ code of a plugin, so a plugin built
 * against another SDK major version, another LibTorch or another C++ ABI is refused with a message
 * instead of crashing. Plugin authors do not fill it by hand: PEFTKIT_PLUGIN(...) in
 * <peftkit/plugin.hpp> does. Example of what the host does with it:
 *
 *   const peftkit_plugin_handshake* h = peftkit_plugin_handshake_v1();   // C call, no C++ yet
 *   if (h->magic != PEFTKIT_PLUGIN_MAGIC || h->api_major != PEFTKIT_API_MAJOR) refuse(...);
 *   void* plugin = h->create();   // only now: a peftkit::Plugin* behind a void*
 *
 * Layout rules: fields are only ever appended; struct_size tells the host how much of the struct
 * the plugin knows.
 */
#ifndef PEFTKIT_PLUGIN_ABI_H_
#define PEFTKIT_PLUGIN_ABI_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PEFTKIT_PLUGIN_MAGIC 0x5046544Bu /* "KTFP": peftkit plugin */

/* SDK API version. Major: any breaking change of a C++ interface. Minor: additions only. */
#define PEFTKIT_API_MAJOR 2
#define PEFTKIT_API_MINOR 2

/* The exported symbol the host looks up (a plain extern "C" function). */
#define PEFTKIT_HANDSHAKE_SYMBOL "peftkit_plugin_handshake_v1"

typedef enum peftkit_plugin_kind {
  PEFTKIT_KIND_PEFT = 1,     /* a PEFT method: peftkit::PeftPlugin */
  PEFTKIT_KIND_DATASET = 2,  /* a dataset format: peftkit::DatasetPlugin */
  PEFTKIT_KIND_QUANTIZER = 3 /* a frozen-weight quantizer: peftkit::QuantizerPlugin */
} peftkit_plugin_kind;

typedef struct peftkit_plugin_handshake {
  uint32_t magic;          /* PEFTKIT_PLUGIN_MAGIC */
  uint32_t struct_size;    /* sizeof(peftkit_plugin_handshake) as the plugin was compiled */
  uint16_t api_major;      /* PEFTKIT_API_MAJOR the plugin was compiled against */
  uint16_t api_minor;      /* PEFTKIT_API_MINOR the plugin was compiled against */
  uint32_t kind;           /* a peftkit_plugin_kind */
  const char* name;        /* what recipes use: "lora", "jsonl", "nf4" */
  const char* version;     /* the plugin's own version, "1.2.0" */
  const char* description; /* one line for `peftkit plugins` */
  /* "torch=2.11.0;cxx11abi=1;cuda=13.0;compiler=gcc12": compared field by field with the host's. */
  const char* abi_tag;
  /* Creates the plugin object (a peftkit::Plugin* of the declared kind), or NULL after writing a
   * message into err. Never throws. */
  void* (*create)(char* err, uint32_t err_len);
  /* Destroys what create returned. */
  void (*destroy)(void* plugin);
} peftkit_plugin_handshake;

typedef const peftkit_plugin_handshake* (*peftkit_plugin_handshake_fn)(void);

#ifdef __cplusplus
}
#endif

#endif /* PEFTKIT_PLUGIN_ABI_H_ */
