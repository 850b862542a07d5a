using Vism.Abstractions;
using Vism.Native;
using Mono.Unix.Native;
using Vism.Testing;

namespace Vism.Native.Tests;

public class LoopListenerTests
{
    [Fact]
    public async Task AcceptsEveryPendingConnectionOnTheLoopAndRemovesTheSocketFileOnDispose()
    {
        using var dir = new TempDir("listener");
        using var loop = new EventLoop("listener-test");
        var accepted = new List<UnixSocket>();
        var threads = new List<bool>();
        string path = dir["s.sock"];
        LoopListener listener = await loop.InvokeAsync(() => LoopListener.Start(path, loop,
            s => { lock (accepted) { accepted.Add(s); threads.Add(loop.IsOnLoop); } }, _ => { }));
        using UnixSocket a = UnixSocket.Connect(path), b = UnixSocket.Connect(path);
        for (int i = 0; i < 200 && accepted.Count < 2; i++) await Task.Delay(10);
        lock (accepted)
        {
            Assert.Equal(2, accepted.Count);
            Assert.All(threads, Assert.True);
            accepted.ForEach(s => s.Dispose());
        }
        await loop.InvokeAsync(listener.Dispose);
        Assert.False(File.Exists(path));
        Assert.Throws<PosixException>(() => UnixSocket.Connect(path));
    }

    [Fact]
    public async Task AStaleSocketFileIsReplacedButAServedOneIsRefused()
    {
        using var dir = new TempDir("listener");
        using var loop = new EventLoop("listener-test");
        string path = dir["s.sock"];
        UnixSocket.Listen(path).Dispose(); // leaves a socket file nobody serves
        Assert.True(File.Exists(path));
        LoopListener first = await loop.InvokeAsync(() => LoopListener.Start(path, loop, s => s.Dispose(), _ => { }));
        var refused = await Assert.ThrowsAsync<PosixException>(() => loop.InvokeAsync(() => LoopListener.Start(path, loop, s => s.Dispose(), _ => { })));
        Assert.Equal(Errno.EADDRINUSE, refused.Errno);
        await loop.InvokeAsync(first.Dispose);
    }

    /// <summary>A client (QEMU, a test, a script) waits for the socket file and then connects. It must
    /// never find a file nobody listens on yet: the path appears only once the socket listens, with
    /// its owner and mode already set.</summary>
    [Fact]
    public void TheSocketFileAppearsOnlyWhenItAlreadyListensWithItsModeSet()
    {
        using var dir = new TempDir("listener");
        string path = dir["s.sock"];
        var access = new SocketAccess(null, null, Convert.ToUInt32("600", 8));
        for (int round = 0; round < 200; round++)
        {
            (Errno Error, uint Mode) first = (Errno.ETIMEDOUT, 0);
            var watcher = new Thread(() => first = SocketWatch.ConnectOnceItExists(path)) { IsBackground = true };
            watcher.Start();
            Thread.Sleep(1);
            using (UnixSocket.Listen(path, access: access))
            {
                Assert.True(watcher.Join(TimeSpan.FromSeconds(10)), "the watcher never saw the socket file");
                (Errno error, uint mode) = first;
                Assert.True(error == 0, $"round {round}: the first connect to the new socket file failed with {error}");
                Assert.Equal(Convert.ToUInt32("600", 8), mode & 0x1FF);
            }
            File.Delete(path);
        }
        Assert.Empty(Directory.GetFiles(dir.Path)); // no temporary name left behind
    }
}
