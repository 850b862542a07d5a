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
    /// lowered from outside to just above the descriptor the eventfd arrives in): the device can
    /// neither read the eventfd's /proc/self/fdinfo nor keep a duplicate, so the answer is FAILED,
    /// with the cause logged. It must not be taken for a kernel that shows no eventfd ids (which
    /// would wire the line with the line/doorbell guard off); nothing is wired and no descriptor
    /// is left behind; vism serves on, and the same request succeeds once descriptors are free.
    /// </summary>
    [Fact]
    public async Task MmioIrqFd_WhileVismIsOutOfDescriptors_IsFailedAndLeavesNothingBehind()
    {
        var lines = new ConcurrentQueue<string>();
        await using var vism = await VismProcess.StartAsync(["a"], l => { lines.Enqueue(l); _log(l); }, transport: "mmio");
        UnixSocket socket = UnixSocket.Connect(vism.Socket("a"));
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

        // The limit leaves 1, then 2, then 3 free descriptor numbers (two attempts each). With one,
        // vism cannot even take the eventfd off the socket (its receive needs one more than the
        // descriptor itself): recvmsg reports the control data truncated and vism ends that VMM's
        // connection, as for any message whose descriptors it cannot have; the test reconnects.
        // With two, the eventfd arrives and nothing more can be opened: that is the case under test.
        MmioStatus status = MmioStatus.Ok;
        for (int attempt = 0; attempt < 6 && status != MmioStatus.Failed; attempt++)
        {
            HashSet<int> open = OpenDescriptors(vism.Pid);
            int slots = 1 + attempt / 2; // free descriptor numbers left below the limit
            int limit = 0;
            for (int free = 0; free < slots; limit++)
                if (!open.Contains(limit)) free++;
            Assert.True(prlimit(vism.Pid, RlimitNofile, new RLimit { Current = (ulong)limit, Maximum = original.Maximum }, out _) == 0,
                $"prlimit: errno {Marshal.GetLastPInvokeError()}");
            try
            {
                status = Call(MmioMessageType.SetIrqFd, new SetIrqFd(0).Encode(), line.Handle);
                _log($"attempt {attempt}: limit {limit}: {status}");
            }
            catch (PosixException ex)
            {
                _log($"attempt {attempt}: limit {limit}: the connection ended ({ex.Message})");
                status = MmioStatus.Ok;
            }
            finally
            {
                Assert.Equal(0, prlimit(vism.Pid, RlimitNofile, original, out _));
            }
            if (status == MmioStatus.Failed) break;
            socket.Dispose();
            socket = UnixSocket.Connect(vism.Socket("a"));
            Assert.Equal(MmioStatus.Ok, Call(MmioMessageType.Hello, new HelloRequest(MmioProtocol.Magic, MmioProtocol.Version).Encode()));
        }
        Assert.Equal(MmioStatus.Failed, status);
        Assert.False(vism.HasExited, "vism ended");

        // The cause is logged, and the refusal is not mistaken for a kernel without eventfd ids.
        Assert.True(SpinWait.SpinUntil(() => lines.Any(l => l.Contains("fdinfo", StringComparison.Ordinal) && l.Contains("Failed", StringComparison.Ordinal)), TimeSpan.FromSeconds(10)),
            "no FAILED refusal naming the unreadable fdinfo was logged");
        Assert.DoesNotContain(lines, l => l.Contains("does not show eventfd ids", StringComparison.Ordinal));

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
        socket.Dispose();
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
