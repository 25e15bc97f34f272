// A page's classic script using the global of <script src="https://bridge/client.js">.
/// <reference types="redis-ws-bridge-client" />

const pageBridge = new RedisWsBridge('/ws', { token: () => sessionStorage.getItem('jwt') ?? undefined });
pageBridge.on('message', (frame: RedisWsBridge.RouteFrame) => console.log(frame));
pageBridge.connect();
