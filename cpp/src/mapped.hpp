// A held engine file mapped into memory, its pages handed back while a backend copies from it
// (pixart_export/mapped.py). OpenVINO's CPU plugin repacks every weight it compiles into memory of its
// own: compiled from a buffer, the full-size T5's int8 weights were held twice (8.8 GiB); mapped, and
// handed back every 0.2 s during the compile (PagedOut), once (4.55 GiB). A constant the plugin keeps
// pointing into the mapping faults back in from the file when it is used.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <thread>

namespace pixart {

class MappedFile {
  public:
    // `size` bytes of the open descriptor `fd` (kept open by its owner), mapped copy-on-write: the
    // writable pointer ov::Tensor takes; nothing writes to it, and no write could reach the file
    MappedFile(int fd, std::size_t size);
    ~MappedFile();
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;
    void* data() const { return data_; }
    std::size_t size() const { return size_; }
    // unmap the resident pages (the file's, unchanged: a later read faults them in again)
    void give_back() const;

  private:
    void* data_ = nullptr;
    std::size_t size_ = 0;
};

// while it lives, a thread hands the mapping's pages back every `period`; once more when it ends
class PagedOut {
  public:
    explicit PagedOut(const MappedFile* file, std::chrono::milliseconds period = std::chrono::milliseconds(200));
    ~PagedOut();
    PagedOut(const PagedOut&) = delete;
    PagedOut& operator=(const PagedOut&) = delete;

  private:
    const MappedFile* file_;
    std::mutex mutex_;
    std::condition_variable wake_;
    bool stop_ = false;
    std::thread thread_;
};

}  // namespace pixart
