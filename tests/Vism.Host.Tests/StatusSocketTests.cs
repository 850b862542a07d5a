using Microsoft.Extensions.Logging.Abstractions;
using Mono.Unix.Native;
using Vism.Host.Status;
using Vism.Testing;

namespace Vism.Host.Tests;

public class StatusSocketTests
{
    /// <summary>`vism status`, or a script that waits for the status socket and then asks, must never
    /// find a socket file nobody listens on yet.</summary>
    [Fact]
    public async Task TheStatusSocketAppearsOnlyWhenItAlreadyListens()
    {
        using var dir = new TempDir("status");
        string path = Path.Combine(dir.Path, StatusSocket.FileName);
        for (int round = 0; round < 100; round++)
        {
            Errno first = Errno.ETIMEDOUT;
            var watcher = new Thread(() => first = SocketWatch.ConnectOnceItExists(path).Error) { IsBackground = true };
            watcher.Start();
            Thread.Sleep(1);
            await using (StatusSocket.Start(dir.Path, _ => Task.FromResult("{}"), NullLogger.Instance))
            {
                Assert.True(watcher.Join(TimeSpan.FromSeconds(10)), "the watcher never saw the status socket");
                Assert.True(first == 0, $"round {round}: the first connect to the new status socket failed with {first}");
            }
            Assert.False(File.Exists(path));
        }
        Assert.Empty(Directory.GetFileSystemEntries(dir.Path)); // no temporary name left behind
    }
}
