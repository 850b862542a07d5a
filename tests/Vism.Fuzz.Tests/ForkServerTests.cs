using System.Diagnostics;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;
using SharpFuzz;
using Vism.Native;

namespace Vism.Fuzz.Tests;

/// <summary>
/// Vism.Fuzz under afl-fuzz's fork-server protocol, with the test in afl-fuzz's place: a System V
/// shared-memory coverage map named by <c>__AFL_SHM_ID</c>, the control pipe on descriptor 198, the
/// status pipe on 199 and the input as the file on standard input, which afl-fuzz writes only after
/// the fork server has greeted it. The driver must run the input afl-fuzz wrote for each run: when it
/// ran an earlier, empty read of that file instead, the first counted run left the coverage map
/// empty and afl-fuzz stopped with "No instrumentation detected" (CI, 2026-12-04).
/// </summary>
[Collection(AflCollection.Name)]
public sealed partial class ForkServerTests : IDisposable
{
    private const int MapSize = 1 << 16;

    private readonly string _dir = Directory.CreateTempSubdirectory("vism-forkserver").FullName;

    [Fact]
    public void ForkServer_InputWrittenAfterTheHello_IsWhatEachRunRuns()
    {
        string bin = InstrumentedCopy();
        string input = Path.Combine(_dir, "cur_input"), ctl = Path.Combine(_dir, "ctl"), st = Path.Combine(_dir, "st");
        File.WriteAllBytes(input, []);
        Assert.Equal(0, Syscall.mkfifo(ctl, FilePermissions.S_IRUSR | FilePermissions.S_IWUSR));
        Assert.Equal(0, Syscall.mkfifo(st, FilePermissions.S_IRUSR | FilePermissions.S_IWUSR));
        int shm = shmget(IpcPrivate, MapSize, IpcCreat | 0b110_000_000); // rw-------
        Assert.True(shm >= 0, $"shmget: {Marshal.GetLastPInvokeError()}");
        nint map = shmat(shm, 0, 0);
        try
        {
            Assert.NotEqual(-1, map);
            var psi = new ProcessStartInfo("bash", ["-c", "exec dotnet \"$1\" vhost-user-session 198<\"$2\" 199>\"$3\" <\"$4\"", "-",
                Path.Combine(bin, "Vism.Fuzz.dll"), ctl, st, input])
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
            };
            psi.Environment["__AFL_SHM_ID"] = shm.ToString(System.Globalization.CultureInfo.InvariantCulture);
            using Process server = Process.Start(psi)!;
            Task<string> stderr = server.StandardError.ReadToEndAsync();
            _ = server.StandardOutput.ReadToEndAsync();
            try
            {
                // Neither open waits for the fork server (a FIFO opened for reading and writing, or for
                // reading without blocking, opens at once), so every wait below has a time limit.
                using SafeFileHandle control = Fd.Own(PosixException.Check(Syscall.open(ctl, OpenFlags.O_RDWR), "open ctl"));
                using SafeFileHandle status = Fd.Own(PosixException.Check(Syscall.open(st, OpenFlags.O_RDONLY | OpenFlags.O_NONBLOCK), "open st"));
                Assert.Equal(0, ReadInt(status, stderr));

                // afl-fuzz writes the input after the hello; by the time it does here, the driver has
                // long finished whatever it does before waiting for the go (SharpFuzz's warm-up run).
                Thread.Sleep(1000);
                string[] seeds = [.. Directory.GetFiles(Path.Combine(Build.Repository, "fuzz/corpus/vhost-user-session")).Order(StringComparer.Ordinal)];
                foreach (string seed in seeds.Take(2))
                {
                    File.WriteAllBytes(input, File.ReadAllBytes(seed));
                    Clear(map);
                    Write(control, 0);
                    Assert.Equal(server.Id, ReadInt(status, stderr));
                    Assert.Equal(0, ReadInt(status, stderr));
                    Assert.True(Covered(map) > 0, $"the run of {Path.GetFileName(seed)} left the coverage map empty: the driver did not run the input afl-fuzz wrote");
                }
            }
            finally
            {
                if (!server.WaitForExit(TimeSpan.FromSeconds(10))) server.Kill(entireProcessTree: true);
            }
        }
        finally
        {
            if (map != -1) shmdt(map);
            shmctl(shm, IpcRmid, 0);
        }
    }

    /// <summary>A copy of Vism.Fuzz's build with the device's assemblies instrumented, as
    /// scripts/fuzz.sh makes it.</summary>
    private string InstrumentedCopy()
    {
        string build = Path.Combine(Build.Repository, "fuzz/Vism.Fuzz/bin", Build.Configuration, "net10.0");
        string bin = Path.Combine(_dir, "bin");
        foreach (string file in Directory.EnumerateFiles(build, "*", SearchOption.AllDirectories))
        {
            string to = Path.Combine(bin, Path.GetRelativePath(build, file));
            Directory.CreateDirectory(Path.GetDirectoryName(to)!);
            File.Copy(file, to);
        }
        foreach (string assembly in new[] { "Vism.Core", "Vism.VhostUser", "Vism.Transport.VhostUser" })
            Assert.NotEmpty(Fuzzer.Instrument(Path.Combine(bin, assembly + ".dll"), _ => true, Options.Value));
        return bin;
    }

    /// <summary>The next 4-byte value on the status pipe, within a minute.</summary>
    private static int ReadInt(SafeFileHandle status, Task<string> stderr)
    {
        var value = new byte[4];
        int got = 0;
        long deadline = Environment.TickCount64 + 60_000;
        while (got < 4)
        {
            var poll = new[] { new Pollfd { fd = Fd.Raw(status), events = PollEvents.POLLIN } };
            int wait = (int)Math.Max(0, deadline - Environment.TickCount64);
            Assert.True(Syscall.poll(poll, 1, wait) > 0, "the fork server did not answer within a minute");
            long n = Read(status, value.AsSpan(got));
            if (n <= 0)
                Assert.Fail($"the fork server closed its status pipe:\n{(stderr.Wait(TimeSpan.FromSeconds(5)) ? stderr.Result : "")}");
            got += (int)n;
        }
        return BitConverter.ToInt32(value);
    }

    private static unsafe long Read(SafeFileHandle fd, Span<byte> into)
    {
        fixed (byte* p = into)
        {
            long n;
            do n = Syscall.read(Fd.Raw(fd), p, (ulong)into.Length);
            while (n < 0 && Stdlib.GetLastError() is Errno.EINTR or Errno.EAGAIN);
            return n;
        }
    }

    private static unsafe void Write(SafeFileHandle control, int value)
    {
        byte* p = stackalloc byte[4];
        *(int*)p = value;
        Assert.Equal(4, Syscall.write(Fd.Raw(control), p, 4));
    }

    private static unsafe void Clear(nint map) => new Span<byte>((void*)map, MapSize).Clear();

    private static unsafe int Covered(nint map)
    {
        var bytes = new ReadOnlySpan<byte>((void*)map, MapSize);
        return MapSize - bytes.Count((byte)0);
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private const int IpcPrivate = 0, IpcCreat = 0x200, IpcRmid = 0;

    [LibraryImport("libc", SetLastError = true)]
    private static partial int shmget(int key, nuint size, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint shmat(int id, nint address, int flags);

    [LibraryImport("libc")]
    private static partial int shmdt(nint address);

    [LibraryImport("libc")]
    private static partial int shmctl(int id, int command, nint buffer);
}
