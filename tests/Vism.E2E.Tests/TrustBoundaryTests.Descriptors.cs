using System.Collections.Concurrent;
using System.Globalization;
using System.Runtime.InteropServices;
using Vism.Mmio;
using Vism.Native;

namespace Vism.E2E.Tests;

public sealed partial class TrustBoundaryTests
{
    private const int RlimitNofile = 7;

    [StructLayout(LayoutKind.Sequential)]
    private struct RLimit
    {
        public ulong Current;
        public ulong Maximum;
    }

    [LibraryImport("libc", EntryPoint = "prlimit", SetLastError = true)]
    private static partial int prlimit(int pid, int resource, in RLimit newLimit, out RLimit oldLimit);

    [LibraryImport("libc", EntryPoint = "prlimit", SetLastError = true)]
    private static partial int prlimitGet(int pid, int resource, nint newLimit, out RLimit oldLimit);

    /// <summary>
    /// A VMM wires an interrupt line at the moment vism is out of descriptors (its RLIMIT_NOFILE
    /// lowered from outside with prlimit). With no free descriptor number at all, the eventfd
    /// cannot even be taken off the socket: the answer is FAILED ("could not be received"), the
    /// message is not acted on (a SET_IRQ_FD without its descriptor would disconnect the line) and
    /// the connection goes on; before, vism ended the VMM's connection and released its guest's
    /// attachments. With one or two free numbers the eventfd arrives but the device can neither
    /// read its /proc/self/fdinfo nor keep a duplicate: FAILED with the cause, not taken for a
    /// kernel that shows no eventfd ids (which would wire the line with the line/doorbell guard
    /// off). Either way nothing is wired and no descriptor is left behind; vism serves on, and the
    /// same request succeeds once descriptors are free.
    /// </summary>
    [Fact]
    public async Task MmioIrqFd_WhileVismIsOutOfDescriptors_IsFailedAndLeavesNothingBehind()
    {
        var lines = new ConcurrentQueue<string>();
        await using var vism = await VismProcess.StartAsync(["a"], l => { lines.Enqueue(l); _log(l); }, transport: "mmio");
        using UnixSocket socket = UnixSocket.Connect(vism.Socket("a"));
        uint id = 1;
        MmioStatus Call(MmioMessageType type, byte[] payload, SafeHandle? fd = null)
        {
            socket.Send(MmioFrame.Build(type, MmioMessageFlags.None, id++, payload), fd is null ? default : [fd]);
            return MmioFrame.Receive(socket, null)!.Value.Header.Status;
        }

        Assert.Equal(MmioStatus.Ok, Call(MmioMessageType.Hello, new HelloRequest(MmioProtocol.Magic, MmioProtocol.Version).Encode()));
        using EventFd line = EventFd.Create();
        int before = OpenDescriptors(vism.Pid).Count;
        Assert.True(prlimitGet(vism.Pid, RlimitNofile, 0, out RLimit original) == 0, $"prlimit: errno {Marshal.GetLastPInvokeError()}");

        // Wires line 0 with the limit leaving `slots` free descriptor numbers below it.
        MmioStatus WireWithFree(int slots)
        {
            HashSet<int> open = OpenDescriptors(vism.Pid);
            int limit = 0;
            for (int free = 0; free < slots || open.Contains(limit); limit++)
                if (!open.Contains(limit)) free++;
            Assert.True(prlimit(vism.Pid, RlimitNofile, new RLimit { Current = (ulong)limit, Maximum = original.Maximum }, out _) == 0,
                $"prlimit: errno {Marshal.GetLastPInvokeError()}");
            try
            {
                MmioStatus status = Call(MmioMessageType.SetIrqFd, new SetIrqFd(0).Encode(), line.Handle);
                _log($"{slots} free below limit {limit}: {status}");
                if (status == MmioStatus.Ok) Assert.Equal(MmioStatus.Ok, Call(MmioMessageType.SetIrqFd, new SetIrqFd(0).Encode())); // raced: unwire
                return status;
            }
            finally
            {
                Assert.Equal(0, prlimit(vism.Pid, RlimitNofile, original, out _));
            }
        }

        // No free number: the descriptor is lost in recvmsg itself.
        Assert.Equal(MmioStatus.Failed, WireWithFree(0));
        Assert.True(SpinWait.SpinUntil(() => lines.Any(l => l.Contains("could not be received", StringComparison.Ordinal) && l.Contains("Failed", StringComparison.Ordinal)), TimeSpan.FromSeconds(10)),
            "no FAILED refusal for descriptors that could not be received was logged");
        Assert.DoesNotContain(lines, l => l.Contains("VMM connection ended", StringComparison.Ordinal));

        // One, two, then three free numbers (vism's receive takes one of them for a moment, so with
        // one the descriptor is lost again): once the eventfd arrives, its fdinfo cannot be read.
        bool FdinfoRefused() => lines.Any(l => l.Contains("fdinfo", StringComparison.Ordinal) && l.Contains("Failed", StringComparison.Ordinal));
        for (int attempt = 0; attempt < 6 && !FdinfoRefused(); attempt++)
        {
            Assert.Equal(MmioStatus.Failed, WireWithFree(1 + attempt / 2));
            SpinWait.SpinUntil(FdinfoRefused, TimeSpan.FromSeconds(1)); // the log line travels through vism's stdout
        }
        Assert.False(vism.HasExited, "vism ended");
        Assert.True(FdinfoRefused(), "no FAILED refusal naming the unreadable fdinfo was logged");
        Assert.DoesNotContain(lines, l => l.Contains("does not show eventfd ids", StringComparison.Ordinal));
        Assert.DoesNotContain(lines, l => l.Contains("VMM connection ended", StringComparison.Ordinal));

        // Nothing kept: the received descriptor is closed, no duplicate was made.
        Assert.True(SpinWait.SpinUntil(() => OpenDescriptors(vism.Pid).Count == before, TimeSpan.FromSeconds(10)),
            $"vism holds {OpenDescriptors(vism.Pid).Count} descriptors after the refusal, {before} before");

        // With descriptors free again the same request succeeds, holds one duplicate, and
        // unwiring gives it back; the device still answers register reads.
        Assert.Equal(MmioStatus.Ok, Call(MmioMessageType.SetIrqFd, new SetIrqFd(0).Encode(), line.Handle));
        Assert.True(SpinWait.SpinUntil(() => OpenDescriptors(vism.Pid).Count == before + 1, TimeSpan.FromSeconds(10)),
            $"vism holds {OpenDescriptors(vism.Pid).Count} descriptors with the line wired, {before} before");
        Assert.Equal(MmioStatus.Ok, Call(MmioMessageType.SetIrqFd, new SetIrqFd(0).Encode()));
        Assert.True(SpinWait.SpinUntil(() => OpenDescriptors(vism.Pid).Count == before, TimeSpan.FromSeconds(10)),
            $"vism holds {OpenDescriptors(vism.Pid).Count} descriptors after unwiring, {before} before");
        socket.Send(MmioFrame.Build(MmioMessageType.Read, MmioMessageFlags.None, id++, new RegisterAccess(MmioRegister.MagicValue, 4, 0).Encode()));
        var (header, payload) = MmioFrame.Receive(socket, null)!.Value;
        Assert.Equal(MmioStatus.Ok, header.Status);
        Assert.Equal(0x74726976u, BitConverter.ToUInt32(payload)); // "virt"
    }

    private static HashSet<int> OpenDescriptors(int pid) =>
        [.. Directory.GetFiles($"/proc/{pid}/fd").Select(f => int.Parse(Path.GetFileName(f), CultureInfo.InvariantCulture))];

    private static int LowestFree(HashSet<int> open)
    {
        int n = 0;
        while (open.Contains(n)) n++;
        return n;
    }
}
