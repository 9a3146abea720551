#include "mapped.hpp"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

namespace pixart {

MappedFile::MappedFile(int fd, std::size_t size) : size_(size) {
    if (size == 0) return;
    data_ = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (data_ == MAP_FAILED) {
        data_ = nullptr;
        throw std::runtime_error(std::string("mmap: ") + std::strerror(errno));
    }
}

MappedFile::~MappedFile() {
    if (data_) ::munmap(data_, size_);
}

void MappedFile::give_back() const {
    if (data_) ::madvise(data_, size_, MADV_DONTNEED);
}

PagedOut::PagedOut(const MappedFile* file, std::chrono::milliseconds period) : file_(file) {
    if (!file_) return;
    thread_ = std::thread([this, period] {
        std::unique_lock<std::mutex> lock(mutex_);
        while (!wake_.wait_for(lock, period, [this] { return stop_; })) file_->give_back();
    });
}

PagedOut::~PagedOut() {
    if (!file_) return;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stop_ = true;
    }
    wake_.notify_all();
    thread_.join();
    file_->give_back();
}

}  // namespace pixart
