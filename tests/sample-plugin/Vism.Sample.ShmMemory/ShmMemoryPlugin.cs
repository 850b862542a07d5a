using System.ComponentModel;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using Microsoft.Win32.SafeHandles;
using Vism.Abstractions;

[assembly: VismPlugin(VismContract.Version)]

namespace Vism.Sample.ShmMemory;

/// <summary>The plugin's entry point: registers one memory kind, <c>sample-shm</c>.</summary>
public sealed class ShmMemoryPlugin : IVismPlugin
{
    public void Register(IVismPluginBuilder builder) =>
        builder.AddMemory<ShmMemoryBackend, ShmMemoryOptions>("sample-shm",
            "Sample third-party plugin: each region is an unlinked file in a tmpfs directory");
}

/// <summary>Options of <c>[device.memory] kind = "sample-shm"</c>.</summary>
public sealed class ShmMemoryOptions : IValidatableOptions
{
    [Description("tmpfs directory the region files are created in (and unlinked at once)")]
    public string Directory { get; set; } = "/dev/shm";

    [Description("Most bytes this device's regions may hold at once")]
    public ulong Capacity { get; set; } = 256UL << 20;

    public void Validate(OptionsValidationContext context)
    {
        if (!System.IO.Directory.Exists(Directory))
            context.Error("directory", $"{Directory} does not exist");
        if (Capacity == 0 || Capacity % ShmMemoryBackend.Page != 0)
            context.Error("capacity", $"{Capacity} is not a positive multiple of {ShmMemoryBackend.Page}");
        else if (context.Device.RegionSize > Capacity)
            context.DeviceError("region-size", $"a region ({context.Device.RegionSize} bytes) is larger than capacity ({Capacity} bytes)");
    }
}

/// <summary>Regions in unlinked tmpfs files: nothing is left behind if the process dies.</summary>
public sealed partial class ShmMemoryBackend(ShmMemoryOptions options, DeviceDescription device, ILogger<ShmMemoryBackend> log) : IMemoryBackend
{
    internal const ulong Page = 4096;
    private ulong _used;
    private ulong _highWater;

    public ulong PageSize => Page;

    public MemoryUsage Usage => new(options.Capacity, _used, _highWater);

    public IMemoryBlock? TryAllocate(ulong length, ulong token, out Refusal refusal)
    {
        refusal = default;
        if (length == 0 || length % Page != 0)
        {
            refusal = new Refusal(IMemoryBackend.AllocNoMemory, $"length {length} is not a positive multiple of {Page}");
            return null;
        }
        if (length > options.Capacity - _used)
        {
            refusal = new Refusal(IMemoryBackend.AllocNoMemory, $"capacity exhausted: {_used} of {options.Capacity} bytes in use, {length} more wanted");
            return null;
        }
        string path = Path.Combine(options.Directory, $"vism-sample-{Environment.ProcessId}-{device.Name}-{token:x16}");
        SafeFileHandle handle = File.OpenHandle(path, FileMode.CreateNew, FileAccess.ReadWrite);
        File.Delete(path);
        int rc = posix_fallocate(handle, 0, (long)length);
        if (rc != 0)
        {
            handle.Dispose();
            refusal = new Refusal(IMemoryBackend.AllocNoMemory, $"cannot claim {length} bytes in {options.Directory}: errno {rc}");
            return null;
        }
        _used += length;
        _highWater = Math.Max(_highWater, _used);
        log.LogDebug("sample-shm: {Device} allocated {Length} bytes for token {Token:x}", device.Name, length, token);
        return new Block(this, handle, length);
    }

    public IReadOnlyList<RecoveredBlock> Recover() => [];

    public void Dispose() { }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int posix_fallocate(SafeFileHandle fd, long offset, long length);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int fallocate(SafeFileHandle fd, int mode, long offset, long length);

    private sealed class Block(ShmMemoryBackend owner, SafeFileHandle handle, ulong length) : IMemoryBlock
    {
        private bool _released;

        public SafeFileHandle Handle { get; } = handle;

        public ulong Offset => 0;

        public ulong Length { get; } = length;

        public void Release()
        {
            if (_released) return;
            _released = true;
            // FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE: pages go back now, mappings read zeros.
            fallocate(Handle, 3, 0, (long)Length);
            owner._used -= Length;
        }

        public void Dispose()
        {
            Release();
            Handle.Dispose();
        }
    }
}
