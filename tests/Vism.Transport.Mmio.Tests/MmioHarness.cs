using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using Microsoft.Win32.SafeHandles;
using Vism.Abstractions;
using Vism.Driver;
using Vism.Driver.Mmio;
using Vism.Native;
using Vism.Testing;

namespace Vism.Transport.Mmio.Tests;

/// <summary>The device double the MMIO tests use: two queues, a 1 MiB REGIONS window of 64 KiB
/// regions, a 4 KiB NOTIFY window of 1-byte slots, config generation 3.</summary>
internal static class MmioTestDevice
{
    public const ulong RegionsLength = 1 << 20;
    public const ulong NotifyLength = 4096;

    /// <summary>16 region slots of 64 KiB; each slot's NOTIFY space is <paramref name="notifySize"/> bytes.</summary>
    public static FakeVirtioDevice Create(IDeviceLoop loop, ulong notifySize = 1) =>
        new(loop, queueCount: 2, RegionsLength, NotifyLength, regionSize: 64 * 1024, notifySize: notifySize, name: "fake0") { ConfigGeneration = 3 };
}

/// <summary>A device test double served by a real <see cref="MmioTransport"/> on a real loop and socket.</summary>
internal sealed class MmioHarness : IAsyncDisposable
{
    private MmioHarness(MmioOptions options, ulong notifySize)
    {
        Dir = new TempDir("vmmio");
        Loop = new EventLoop("mmio-test");
        Device = MmioTestDevice.Create(Loop, notifySize);
        var host = new HostDescription { Gid = 1, StateDirectory = Dir.Path, SocketDirectory = Dir.Path };
        Transport = new MmioTransport(options, Device.Description, host, Loop, Counters, Log);
    }

    public TempDir Dir { get; }
    public EventLoop Loop { get; }
    public FakeVirtioDevice Device { get; }
    public TestCounters Counters { get; } = new();
    public CapturingLogger<MmioTransport> Log { get; } = new();
    public MmioTransport Transport { get; }
    public string SocketPath => Transport.Endpoint;

    public static async Task<MmioHarness> StartAsync(MmioOptions? options = null, ulong notifySize = 1)
    {
        var h = new MmioHarness(options ?? new MmioOptions(), notifySize);
        await h.Loop.InvokeAsync(() => h.Transport.Start(h.Device));
        return h;
    }

    public MmioVmmClient Connect(MmioVmmOptions? options = null, GuestRam? ram = null) =>
        MmioVmmClient.Connect(SocketPath, ram, options);

    /// <summary>A bare protocol peer that has done HELLO, once the device is connected to it.</summary>
    public async Task<RawVmm> ConnectRawAsync()
    {
        var peer = RawVmm.Connect(SocketPath);
        peer.Hello();
        await WaitUntil(() => Device.Services is not null, "the device is connected");
        return peer;
    }

    /// <summary>The device's MapAsync for the connected VMM, run on the loop.</summary>
    public Task<string?> Map(ShmId id, ulong offset, IMemoryBlock block, ulong length, bool writable = true) =>
        Loop.InvokeAsync(async () => await Services.MapAsync(id, offset, block, length, writable));

    /// <summary>The device's UnmapAsync for the connected VMM, run on the loop.</summary>
    public Task<string?> Unmap(ShmId id, ulong offset, ulong length) =>
        Loop.InvokeAsync(async () => await Services.UnmapAsync(id, offset, length));

    public Task<T> OnLoop<T>(Func<T> work) => Loop.InvokeAsync(work);

    public Task OnLoop(Action work) => Loop.InvokeAsync(work);

    /// <summary>The device's services for the connected VMM (what the device model would use).</summary>
    public ITransportServices Services => Device.Services ?? throw new InvalidOperationException("no VMM is connected");

    /// <summary>Waits (generously) until <paramref name="condition"/>, evaluated on the loop, holds.</summary>
    public async Task WaitUntil(Func<bool> condition, string what)
    {
        long deadline = Environment.TickCount64 + 20_000;
        while (!await OnLoop(condition))
        {
            if (Environment.TickCount64 > deadline) throw new TimeoutException($"timed out waiting until {what}");
            await Task.Delay(10);
        }
    }

    public async ValueTask DisposeAsync()
    {
        await Transport.DisposeAsync();
        Loop.Dispose();
        Dir.Dispose();
    }
}

/// <summary>An ILogger that keeps every message (to check that reasons are logged).</summary>
internal sealed class CapturingLogger<T> : ILogger<T>
{
    public ConcurrentQueue<(LogLevel Level, string Message)> Entries { get; } = new();

    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => true;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
        Entries.Enqueue((logLevel, formatter(state, exception)));

    public bool Contains(string text) => Entries.Any(e => e.Message.Contains(text, StringComparison.OrdinalIgnoreCase));
}

/// <summary>Region backing for tests: a memfd block.</summary>
internal sealed class MemfdBlock : IMemoryBlock
{
    public MemfdBlock(ulong length, ulong offset = 0)
    {
        Handle = MemFd.Create("test-region", offset + length);
        Offset = offset;
        Length = length;
    }

    public SafeFileHandle Handle { get; }
    public ulong Offset { get; }
    public ulong Length { get; }
    public void Release() { }
    public void Dispose() => Handle.Dispose();
}
